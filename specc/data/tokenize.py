"""Turn validated examples into token sequences with target masks, and report what that did.

A Sequence's target_mask[t] is 1 when token t is a training target (predicted from token t-1), so
target_mask[0] is always 0. What is a target depends on the format:

- text:              bos + text + eos; every token after bos is a target.
- prompt_completion: bos + prompt + completion + eos; only completion and eos are targets. Prompt and
                     completion are tokenized separately, so the boundary between them is exact (no
                     token straddles it); put any separating space/newline inside one of the strings.
- chat:              the tokenizer's chat template renders the conversation; only the tokens of
                     assistant turns (their content and the template's end-of-turn marker) are targets.

Chat masks come from rendering prefixes. For assistant message i, render messages[:i+1] with that
message's content replaced by a marker character: the text before the marker is exactly what precedes
the content (the template's assistant header included). Render messages[:i+1] as they are: where that
stops agreeing with the full rendering is where the turn ends, after the template's end-of-turn text.
A token of the full rendering (tokenized once, with offsets) is a target when its last character lies
in such a span: a token that carries the space before the content ("▁answer") counts; a header token
ending where the content starts does not, nor does a next turn's header of which the two renderings
happen to share a character. Why a marker rather than add_generation_prompt=True: some templates close
every rendering (e.g. with eos) before the generation prompt, and templates refuse an empty
conversation when the assistant speaks first. Why characters rather than token prefixes: a prefix
tokenized alone can split differently from the whole conversation. A template that renders earlier
turns differently once later turns exist (history rewriting) is refused with a UserError rather than
guessed at.

Sequences longer than max_length are truncated (stride=None) or cut into windows of max_length that
start every `stride` tokens, the last window ending at the sequence's end. The first token of a
window has no context in it, so it is never a target there; a window without targets is dropped.
"""
from __future__ import annotations

import bisect
import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from specc.errors import UserError

# Thresholds for TokenizationReport.warnings.
HEAVY_OVERLAP = 0.5
MANY_TRUNCATED = 0.1
# Stands in for an assistant message's content to find where the content starts (a private-use
# character: no tokenizer or template gives it a meaning, and trimming leaves it alone).
CONTENT_MARKER = "\ue000"


@dataclass(frozen=True)
class Sequence:
    token_ids: tuple[int, ...]
    target_mask: tuple[int, ...]   # 0/1 per token; [0] is always 0

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.target_mask) or not self.token_ids or self.target_mask[0]:
            raise ValueError("a Sequence needs equal-length ids and mask, at least one token, and mask[0] == 0")

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def n_targets(self) -> int:
        return sum(self.target_mask)


@dataclass(frozen=True)
class TokenizationReport:
    n_examples: int
    n_sequences: int          # after truncation / windowing, what one epoch trains on
    n_truncated: int          # examples cut at max_length (stride=None only)
    n_dropped: int            # windows (or truncated examples) left without any target token
    n_tokens: int             # tokens in all sequences: what one epoch feeds the model
    n_unique_tokens: int      # distinct example tokens those sequences cover
    n_target_tokens: int
    length_p50: int           # example lengths in tokens, before truncation or windowing
    length_p90: int
    length_max: int
    max_length: int
    stride: int | None
    warnings: tuple[str, ...]

    @property
    def overlap_fraction(self) -> float:
        """Share of the tokens fed per epoch that are repeats of a token another window already holds."""
        return 1.0 - self.n_unique_tokens / self.n_tokens if self.n_tokens else 0.0

    @property
    def times_seen_per_epoch(self) -> float:
        """How often each example token goes through the model per epoch (1.0 without overlap)."""
        return self.n_tokens / self.n_unique_tokens if self.n_unique_tokens else 0.0

    def to_dict(self) -> dict[str, object]:
        fields = {k: v for k, v in self.__dict__.items() if k != "warnings"}
        return {**fields, "overlap_fraction": self.overlap_fraction,
                "times_seen_per_epoch": self.times_seen_per_epoch, "warnings": list(self.warnings)}


def pad_token_id(tokenizer) -> int:
    """The id that fills padding: the tokenizer's pad token, or eos when it has none (common for base
    models). Padding is never attended to nor a target, so which id it is does not change training."""
    for pid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pid is not None:
            return int(pid)
    raise UserError("the tokenizer has neither a pad nor an eos token, so batches cannot be padded",
                    hint="use a model whose tokenizer defines eos_token (tokenizer_config.json)")


def encode(tokenizer, example: dict, fmt: str, max_length: int, stride: int | None) -> list[Sequence]:
    """The sequences one example becomes: one, none (no target left) or, with a stride, several windows."""
    return tokenize_split(tokenizer, [example], fmt, max_length, stride)[0]


def tokenize_split(tokenizer, examples: list[dict], fmt: str, max_length: int,
                   stride: int | None) -> tuple[list[Sequence], TokenizationReport]:
    """Tokenize a whole split at once (batched through the fast tokenizer) and cut it to max_length."""
    _check_lengths(max_length, stride)
    if fmt not in _FULL_SEQUENCES:
        raise UserError(f"unknown data format {fmt!r}", hint=f"use one of: {', '.join(_FULL_SEQUENCES)}")
    full = _FULL_SEQUENCES[fmt](tokenizer, examples)
    sequences: list[Sequence] = []
    n_truncated = n_dropped = n_unique = 0
    for ids, mask in full:
        kept, truncated, dropped, covered = _cut(ids, mask, max_length, stride)
        sequences += kept
        n_truncated += truncated
        n_dropped += dropped
        n_unique += covered
    lengths = np.array([len(ids) for ids, _ in full] or [0])
    report = TokenizationReport(
        n_examples=len(examples), n_sequences=len(sequences), n_truncated=n_truncated, n_dropped=n_dropped,
        n_tokens=sum(len(s) for s in sequences), n_unique_tokens=n_unique,
        n_target_tokens=sum(s.n_targets for s in sequences),
        length_p50=int(np.percentile(lengths, 50)), length_p90=int(np.percentile(lengths, 90)),
        length_max=int(lengths.max()), max_length=max_length, stride=stride, warnings=())
    return sequences, _with_warnings(report)


def _check_lengths(max_length: int, stride: int | None) -> None:
    if max_length < 2:
        raise UserError(f"max_length={max_length} is too short: a sequence needs 2 tokens to hold one target",
                        hint="set data.max_length to the longest sequence you want to train on, e.g. 1024")
    if stride is not None and not 1 <= stride <= max_length:
        raise UserError(f"stride={stride} must be between 1 and max_length={max_length}",
                        hint="stride is how far each window starts after the previous one; stride=max_length "
                             "means no overlap, and no stride means truncate to max_length")


def _cut(ids: list[int], mask: list[int], max_length: int,
         stride: int | None) -> tuple[list[Sequence], bool, int, int]:
    """(kept sequences, truncated?, number dropped for lack of targets, distinct tokens covered)."""
    if len(ids) <= max_length or stride is None:
        window = _window(ids, mask, 0, max_length)
        truncated = len(ids) > max_length
        return ([window], truncated, 0, len(window)) if window else ([], truncated, 1, 0)
    kept, dropped, covered, covered_to = [], 0, 0, 0
    for start in range(0, len(ids), stride):
        end = min(start + max_length, len(ids))
        window = _window(ids, mask, start, end)
        if window is None:
            dropped += 1
        else:
            kept.append(window)
            # Windows come in order of start and end, so their union only ever grows at its end.
            covered += end - max(start, covered_to)
            covered_to = end
        if end == len(ids):
            break
    return kept, False, dropped, covered


def _window(ids: list[int], mask: list[int], start: int, end: int) -> Sequence | None:
    targets = (0, *mask[start + 1:end])   # a window's first token has no context inside it
    return Sequence(tuple(ids[start:end]), targets) if any(targets) else None


def _text(tokenizer, examples: list[dict]) -> list[tuple[list[int], list[int]]]:
    bos, eos = _bos(tokenizer), _eos(tokenizer)
    out = []
    for tokens in _token_ids(tokenizer, [e["text"] for e in examples]):
        ids = bos + tokens + eos
        out.append((ids, [0] + [1] * (len(ids) - 1)))
    return out


def _prompt_completion(tokenizer, examples: list[dict]) -> list[tuple[list[int], list[int]]]:
    bos, eos = _bos(tokenizer), _eos(tokenizer)
    prompts = _token_ids(tokenizer, [e["prompt"] for e in examples])
    completions = _token_ids(tokenizer, [e["completion"] for e in examples])
    out = []
    for prompt, completion in zip(prompts, completions):
        ids = bos + prompt + completion + eos
        mask = [0] * len(bos + prompt) + [1] * len(completion + eos)
        mask[0] = 0   # no bos and an empty prompt: the first completion token has nothing to predict it
        out.append((ids, mask))
    return out


def _chat(tokenizer, examples: list[dict]) -> list[tuple[list[int], list[int]]]:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("format 'chat' needs a chat template, and this model's tokenizer has none",
                        hint="use a chat/instruct model, or convert the data to format 'prompt_completion'")
    texts, spans = _render_chats(tokenizer, [e["messages"] for e in examples])
    out = []
    for ids, offsets, turns in zip(*_encode(tokenizer, texts, with_offsets=True), spans):
        ends = [end for _, end in offsets]   # in text order, so each turn is one run of tokens
        mask = [0] * len(ids)
        for start, end in turns:
            lo, hi = bisect.bisect_right(ends, start), bisect.bisect_right(ends, end)
            mask[lo:hi] = [1] * (hi - lo)
        mask[:1] = [0]
        out.append((ids, mask))
    return out


def _render_chats(tokenizer, conversations: list[list[dict]]) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Each conversation rendered, and the character spans of its assistant turns. All renderings go
    through the template in one batched call, which saves most of transformers' per-call overhead."""
    jobs: list[list[dict]] = []
    owners: list[int] = []

    def render_later(messages: list[dict], k: int) -> int:
        jobs.append(messages)
        owners.append(k)
        return len(jobs) - 1

    plans = []
    for k, messages in enumerate(conversations):
        full = render_later(messages, k)
        turns = [(i, render_later([*messages[:i], {**m, "content": CONTENT_MARKER}], k),
                  full if i == len(messages) - 1 else render_later(messages[:i + 1], k))
                 for i, m in enumerate(messages) if m["role"] == "assistant"]
        plans.append((full, turns))
    rendered = _render_all(tokenizer, jobs, owners)

    spans = []
    for k, (full_job, turns) in enumerate(plans):
        full = rendered[full_job]
        spans.append([])
        for i, marked_job, through_job in turns:
            marked = rendered[marked_job]
            found = marked.find(CONTENT_MARKER)
            before = marked[:found]
            through = rendered[through_job]
            end = len(through) if full.startswith(through) else len(os.path.commonprefix([through, full]))
            content = conversations[k][i]["content"].strip()
            if found < 0 or not full.startswith(before) or content not in full[len(before):end]:
                raise UserError(
                    f"example {k + 1}: cannot locate assistant message {i} in the rendered conversation: the "
                    "chat template renders earlier turns differently once later turns exist",
                    hint="such templates rewrite history (e.g. drop earlier reasoning); put one assistant turn "
                         "per example, or use format 'prompt_completion'")
            spans[-1].append((len(before), end))
    return [rendered[full_job] for full_job, _ in plans], spans


def _render_all(tokenizer, conversations: list[list[dict]], owners: list[int]) -> list[str]:
    try:
        return list(tokenizer.apply_chat_template(conversations, tokenize=False))
    except Exception:   # jinja errors and template-raised exceptions alike: find the example to blame
        for messages, k in zip(conversations, owners):
            try:
                tokenizer.apply_chat_template(messages, tokenize=False)
            except Exception as e:
                raise UserError(f"example {k + 1}: the chat template failed: {e}",
                                hint="check the order of roles this model's template accepts "
                                     "(many require: system?, user, assistant, user, ...)") from e
        raise


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return _encode(tokenizer, texts)[0]


def _encode(tokenizer, texts: list[str], with_offsets: bool = False) -> tuple[list[list[int]], list]:
    """Token ids (and character offsets) of each text, without special tokens added. Goes straight to
    the Rust tokenizer when there is one: transformers' per-text conversion costs more than encoding."""
    if not texts:
        return [], []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings], [e.offsets for e in encodings]
    if with_offsets:   # slow (Python) tokenizers have no offsets
        raise UserError("format 'chat' needs a fast tokenizer (a tokenizer.json in the model directory)",
                        hint="save the tokenizer with a recent transformers, which writes tokenizer.json")
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]], []


def _bos(tokenizer) -> list[int]:
    return [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]


def _eos(tokenizer) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token, so the model cannot learn where a text ends",
                        hint="use a model whose tokenizer defines eos_token (tokenizer_config.json)")
    return [int(tokenizer.eos_token_id)]


_FULL_SEQUENCES = {"text": _text, "prompt_completion": _prompt_completion, "chat": _chat}


def _with_warnings(report: TokenizationReport) -> TokenizationReport:
    warnings = []
    if report.overlap_fraction > HEAVY_OVERLAP:
        warnings.append(
            f"windows overlap {report.overlap_fraction:.1%} (max_length={report.max_length}, "
            f"stride={report.stride}): each token is seen {report.times_seen_per_epoch:.1f} times per epoch. "
            "Heavy overlap overfits: the classic failure is stride=1 on 1024-token windows, 99.9% overlap, "
            "each token seen ~1023 times per epoch. Use a stride near max_length (e.g. 3/4 of it).")
    truncated = report.n_truncated / report.n_examples if report.n_examples else 0.0
    if truncated > MANY_TRUNCATED:
        share = "most examples" if truncated > 0.5 else "many examples"
        warnings.append(
            f"{share} were truncated: {report.n_truncated} of {report.n_examples} ({truncated:.0%}) are longer "
            f"than max_length={report.max_length} (p90 length {report.length_p90}, max {report.length_max}); "
            "their tails are never trained on. Raise max_length or set a stride to keep them.")
    if report.n_dropped:
        warnings.append(
            f"{report.n_dropped} sequence(s) had no target token left after cutting to max_length="
            f"{report.max_length} and were dropped (e.g. a prompt longer than max_length).")
    if report.n_examples and not report.n_sequences:
        warnings.append("no sequence is left to train on")
    return dataclasses.replace(report, warnings=tuple(warnings))


def prompt_token_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """What the model sees before it answers: bos + prompt, tokenized exactly as training tokenizes a prompt."""
    bos = _bos(tokenizer)
    return [bos + ids for ids in _token_ids(tokenizer, prompts)]


def chat_generation_prompts(tokenizer, conversations: list[list[dict]]) -> list[str]:
    """Each conversation rendered through the chat template with the generation prompt (the assistant header)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("format 'chat' needs a chat template, and this model's tokenizer has none",
                        hint="use a chat/instruct model, or convert the data to format 'prompt_completion'")
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


def chat_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """A rendered chat text's tokens; the template writes its own special tokens, so none are added."""
    return _token_ids(tokenizer, texts)
