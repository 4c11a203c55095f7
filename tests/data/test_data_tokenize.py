import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from specc.data.batches import BatchPlan
from specc.data.jsonl import read_examples
from specc.data.tokenize import encode, pad_token_id, tokenize_split
from specc.errors import UserError

SPECIALS = ["<pad>", "<s>", "</s>", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = [f"w{i}" for i in range(100)] + ["hello", "world", "question", "answer", "be", "brief"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer(pad: bool = True, chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: each whitespace-separated word is one token, so expected ids are easy to read."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                        **({"pad_token": "<pad>"} if pad else {}))
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(text.split())


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{(start + i) % 100}" for i in range(n))


def targets_of(seq, tokenizer) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(t) for t, m in zip(seq.token_ids, seq.target_mask) if m]


def test_text_is_bos_tokens_eos_all_targets(tokenizer):
    [seq] = encode(tokenizer, {"text": "hello world"}, "text", max_length=16, stride=None)
    assert list(seq.token_ids) == ids(tokenizer, "<s> hello world </s>")
    assert seq.target_mask == (0, 1, 1, 1)


def test_prompt_completion_trains_only_on_completion_and_eos(tokenizer):
    [seq] = encode(tokenizer, {"prompt": "question w1 w2", "completion": "answer w3"}, "prompt_completion", 16, None)
    assert list(seq.token_ids) == ids(tokenizer, "<s> question w1 w2 answer w3 </s>")
    assert seq.target_mask == (0, 0, 0, 0, 1, 1, 1)


def test_chat_trains_only_on_assistant_turns(tokenizer):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "question w1"},
                {"role": "assistant", "content": "answer w2"}, {"role": "user", "content": "w3"},
                {"role": "assistant", "content": "w4 w5"}]
    [seq] = encode(tokenizer, {"messages": messages}, "chat", 64, None)
    assert list(seq.token_ids) == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    # Each assistant turn: its content and the end-of-turn marker (so the model learns to stop).
    assert targets_of(seq, tokenizer) == ["answer", "w2", "<|end|>", "w4", "w5", "<|end|>"]


def test_chat_starting_with_assistant(tokenizer):
    messages = [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "w1"},
                {"role": "assistant", "content": "w2"}]
    [seq] = encode(tokenizer, {"messages": messages}, "chat", 64, None)
    assert targets_of(seq, tokenizer) == ["hello", "<|end|>", "w2", "<|end|>"]


def test_chat_template_that_ends_the_conversation_with_eos(tokenizer):
    # eos only after the last message: earlier renderings are not prefixes of the full one; still works.
    tok = make_tokenizer(chat_template=CHAT_TEMPLATE.replace("{% endfor %}", "{% endfor %}{{ eos_token }}"))
    messages = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"},
                {"role": "user", "content": "w3"}, {"role": "assistant", "content": "w4"}]
    [seq] = encode(tok, {"messages": messages}, "chat", 64, None)
    assert targets_of(seq, tok) == ["w2", "<|end|>", "w4", "<|end|>", "</s>"]


def test_chat_with_spaces_merged_into_tokens():
    # SentencePiece-style tokens carry the space before them ("▁answer" spans " answer"), and this
    # Mistral-like template puts that space in the assistant header: the token is still a target.
    specials = ["<pad>", "<s>", "</s>", "[UNK]", "[INST]", "[/INST]"]
    vocab = {t: i for i, t in enumerate(specials + ["▁hello", "▁world", "▁answer", "▁the"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
                               "{{ m['content'] }}[/INST]{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}")
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "answer the"},
                {"role": "user", "content": "world"}, {"role": "assistant", "content": "the"}]
    [seq] = encode(tokenizer, {"messages": messages}, "chat", 64, None)
    assert targets_of(seq, tokenizer) == ["▁answer", "▁the", "</s>", "▁the", "</s>"]


def test_chat_template_that_rewrites_history_is_a_user_error():
    tok = make_tokenizer(chat_template=CHAT_TEMPLATE.replace(
        "{{ m['content'] }}", "{% if m['role'] == 'assistant' and not loop.last %}w0{% else %}{{ m['content'] }}{% endif %}"))
    messages = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"},
                {"role": "user", "content": "w3"}, {"role": "assistant", "content": "w4"}]
    with pytest.raises(UserError, match="example 1: cannot locate assistant message 1"):
        encode(tok, {"messages": messages}, "chat", 64, None)


def test_chat_without_template_is_a_user_error():
    with pytest.raises(UserError, match="needs a chat template"):
        encode(make_tokenizer(chat_template=None), {"messages": [{"role": "assistant", "content": "x"}]}, "chat", 8, None)


def test_chat_template_failure_names_the_example():
    tok = make_tokenizer(chat_template="{% if messages|length > 1 %}{{ raise_exception('roles must alternate') }}"
                                       "{% endif %}{{ messages[0]['content'] }}")
    good = {"messages": [{"role": "assistant", "content": "x"}]}
    bad = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    with pytest.raises(UserError, match="example 2: the chat template failed: roles must alternate"):
        tokenize_split(tok, [good, bad], "chat", 8, None)


def test_truncation_keeps_the_head_and_counts(tokenizer):
    examples = [{"text": words(20)}, {"text": words(3)}]
    seqs, report = tokenize_split(tokenizer, examples, "text", max_length=8, stride=None)
    assert [len(s) for s in seqs] == [8, 5]
    assert list(seqs[0].token_ids) == ids(tokenizer, "<s> " + words(7))
    assert report.n_truncated == 1 and report.length_max == 22
    assert report.overlap_fraction == 0.0 and report.n_unique_tokens == report.n_tokens == 13
    assert any("many examples were truncated" in w for w in report.warnings)


def test_most_truncated_warning(tokenizer):
    _, report = tokenize_split(tokenizer, [{"text": words(20)}] * 3, "text", max_length=8, stride=None)
    assert any(w.startswith("most examples were truncated: 3 of 3 (100%)") for w in report.warnings)


def test_prompt_longer_than_max_length_is_dropped(tokenizer):
    examples = [{"prompt": words(20), "completion": "answer"}, {"prompt": "w1", "completion": "answer"}]
    seqs, report = tokenize_split(tokenizer, examples, "prompt_completion", max_length=8, stride=None)
    assert len(seqs) == 1 and report.n_dropped == 1 and report.n_truncated == 1
    assert any("no target token left" in w for w in report.warnings)


def test_stride_windows_and_dropped_prompt_windows(tokenizer):
    # 1 bos + 10 prompt + 2 completion + eos = 14 tokens; windows of 6 every 4: [0,6) [4,10) [8,14)
    ex = {"prompt": words(10), "completion": "answer hello"}
    seqs = encode(tokenizer, ex, "prompt_completion", max_length=6, stride=4)
    assert len(seqs) == 1   # the first two windows hold only prompt tokens
    assert targets_of(seqs[0], tokenizer) == ["answer", "hello", "</s>"]


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 60), max_length=st.integers(2, 20), data=st.data())
def test_stride_windows_cover_everything(n, max_length, data):
    tok = make_tokenizer()
    stride = data.draw(st.integers(1, max_length))
    seqs, report = tokenize_split(tok, [{"text": words(n)}], "text", max_length, stride)
    full = ids(tok, "<s> " + words(n) + " </s>")
    # Locate each window in the full sequence: windows start every `stride` tokens.
    trained, seen = set(), set()
    for k, seq in enumerate(seqs):
        start = next(s for s in range(k * stride, len(full), stride) if full[s:s + len(seq)] == list(seq.token_ids))
        assert len(seq) == min(max_length, len(full) - start) and seq.target_mask[0] == 0
        trained |= {start + t for t, m in enumerate(seq.target_mask) if m}
        seen |= set(range(start, start + len(seq)))
    assert start + len(seqs[-1]) == len(full) or len(full) - start - max_length == 1   # the tail is reached
    if stride < max_length:   # overlap gives every window's first token context in the window before
        assert trained == set(range(1, len(full)))
    else:                     # no overlap: a window's first token is never a target
        assert trained == set(range(1, len(full))) - set(range(0, len(full), max_length))
    assert report.n_unique_tokens == len(seen) and report.n_tokens == sum(len(s) for s in seqs)
    assert report.n_truncated == 0


def test_stride_one_warns_of_heavy_overlap(tokenizer):
    _, report = tokenize_split(tokenizer, [{"text": words(300)}], "text", max_length=64, stride=1)
    assert report.n_sequences == 302 - 64 + 1
    assert report.overlap_fraction > 0.9
    [warning] = report.warnings
    assert "stride=1" in warning and f"seen {report.times_seen_per_epoch:.1f} times per epoch" in warning
    assert "stride=1 on 1024-token windows" in warning and "99.9% overlap" in warning


def test_stride_equal_to_max_length_has_no_overlap(tokenizer):
    _, report = tokenize_split(tokenizer, [{"text": words(100)}] * 3, "text", max_length=25, stride=25)
    assert report.overlap_fraction == 0.0 and report.times_seen_per_epoch == 1.0
    assert report.n_tokens == report.n_unique_tokens == 3 * 102 and report.warnings == ()


@pytest.mark.parametrize("max_length, stride", [(1, None), (8, 0), (8, 9)])
def test_bad_lengths_are_user_errors(tokenizer, max_length, stride):
    with pytest.raises(UserError):
        encode(tokenizer, {"text": "x"}, "text", max_length, stride)


def test_report_lengths_and_dict(tokenizer):
    examples = [{"text": words(n)} for n in range(1, 11)]   # lengths 3..12
    _, report = tokenize_split(tokenizer, examples, "text", 64, None)
    assert (report.length_p50, report.length_p90, report.length_max) == (7, 11, 12)
    d = report.to_dict()
    assert d["n_examples"] == 10 and d["times_seen_per_epoch"] == 1.0 and d["warnings"] == []
    json.dumps(d)


def test_pad_falls_back_to_eos():
    assert pad_token_id(make_tokenizer()) == 0
    tok = make_tokenizer(pad=False)
    assert pad_token_id(tok) == tok.eos_token_id == 2


def test_jsonl_to_batches_end_to_end(tmp_path, tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": words(i % 5 + 1), "completion": words(3, i)}) for i in range(30)))
    seqs, report = tokenize_split(tokenizer, read_examples(path, "prompt_completion"), "prompt_completion", 32, None)
    plan = BatchPlan(seqs, batch_size=2, max_length=32, packing=True, pad_id=pad_token_id(tokenizer), seed=0)
    batches = [plan.batch_at(0, i) for i in range(plan.batches_per_epoch(0))]
    assert sum(b.n_target_tokens for b in batches) == report.n_target_tokens == 30 * 4
    assert sum(b.n_tokens for b in batches) == report.n_tokens
