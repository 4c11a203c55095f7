"""The offline quickstart assets: the builtin datasets and the tiny pretrained Llama.

The model is built once per session into a temporary cache (about a minute of CPU); the tests that
exercise the cache logic swap in a fake, instant build.
"""
from __future__ import annotations

import json
import os
import random

import pytest

# The builtin model must load with the hub unreachable.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from specc.builtin import datasets, tiny_llama  # noqa: E402
from specc.builtin.datasets import BUILTIN_DATASETS, generate, resolve_builtin_data  # noqa: E402
from specc.builtin.tiny_llama import ensure_builtin_model  # noqa: E402
from specc.errors import UserError  # noqa: E402


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- datasets


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a, b, c = (generate("capitalization", tmp_path / d, seed=s) for d, s in (("a", 0), ("b", 0), ("c", 1)))
    for split in datasets.SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()


def test_capitalization_records_are_valid_prompt_completion(tmp_path):
    paths = generate("capitalization", tmp_path)
    spec = BUILTIN_DATASETS["capitalization"]
    assert spec.format == "prompt_completion"
    words = {}
    for split, path in paths.items():
        records = read_jsonl(path)
        assert len(records) == spec.sizes[split]
        for r in records:
            assert set(r) == {"prompt", "completion"} and r["prompt"] and r["completion"]
            word = r["prompt"].removeprefix("Capitalize:\n").removesuffix("\n")
            assert r["completion"] == word.capitalize() != word
        words[split] = {r["completion"] for r in records}
    # held-out words: validation measures the skill, not memorised words
    assert not words["train"] & words["valid"] and not words["train"] & words["test"]


def test_resolve_builtin_data_generates_once_and_repairs_a_damaged_cache(tmp_path):
    paths = resolve_builtin_data("builtin:capitalization", tmp_path)
    assert set(paths) == {"train", "valid", "test"} and all(p.is_file() for p in paths.values())
    stamp = paths["train"].stat().st_mtime_ns
    assert resolve_builtin_data("builtin:capitalization", tmp_path) == paths
    assert paths["train"].stat().st_mtime_ns == stamp

    paths["valid"].unlink()
    assert resolve_builtin_data("builtin:capitalization", tmp_path)["valid"].read_bytes() == \
        generate("capitalization", tmp_path / "fresh")["valid"].read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("uri", ["capitalization", "builtin:", "builtin:nope", "file:capitalization"])
def test_bad_builtin_data_uri_is_a_user_error(tmp_path, uri):
    with pytest.raises(UserError):
        resolve_builtin_data(uri, tmp_path)


# ---------------------------------------------------------------- the model cache (fake, instant builds)


@pytest.fixture
def fake_build(monkeypatch):
    """Replace the minute-long build by one that writes placeholder files; counts its calls."""
    calls = []

    def build(out_dir, log=None):
        calls.append(out_dir)
        for name in tiny_llama.REQUIRED_FILES:
            if name != tiny_llama.MARKER:  # the marker is ensure_builtin_model's job
                (out_dir / name).write_text("{}")

    monkeypatch.setattr(tiny_llama, "build_model", build)
    return calls


def test_cache_is_built_once_then_reused(tmp_path, fake_build):
    first = ensure_builtin_model(cache_dir=tmp_path)
    assert ensure_builtin_model(cache_dir=tmp_path) == first
    assert len(fake_build) == 1 and tiny_llama.is_complete(first)
    assert json.loads((first / tiny_llama.MARKER).read_text())["version"] == tiny_llama.MODEL_VERSION


def test_leftover_tmp_dir_is_not_used(tmp_path, fake_build):
    leftover = tmp_path / f".tiny-llama-v{tiny_llama.MODEL_VERSION}.tmp-crashed"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    path = ensure_builtin_model(cache_dir=tmp_path)
    assert len(fake_build) == 1 and path != leftover and tiny_llama.is_complete(path)


@pytest.mark.parametrize("damage", ["model.safetensors", tiny_llama.MARKER])
def test_damaged_cache_is_rebuilt(tmp_path, fake_build, damage):
    path = ensure_builtin_model(cache_dir=tmp_path)
    (path / damage).unlink()
    assert ensure_builtin_model(cache_dir=tmp_path) == path
    assert len(fake_build) == 2 and tiny_llama.is_complete(path)


def test_failed_build_leaves_no_cache_behind(tmp_path, monkeypatch):
    def broken(out_dir, log=None):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(tiny_llama, "build_model", broken)
    with pytest.raises(RuntimeError):
        ensure_builtin_model(cache_dir=tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_unknown_builtin_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        ensure_builtin_model("gpt-5", cache_dir=tmp_path)


# ---------------------------------------------------------------- the real model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return ensure_builtin_model(cache_dir=tmp_path_factory.mktemp("specc-cache"))


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def test_real_build_is_reused_without_rebuilding(model_dir, monkeypatch):
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(tiny_llama, "build_model", lambda *a, **k: pytest.fail("rebuilt a complete cache"))
    assert ensure_builtin_model(cache_dir=model_dir.parent) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_tokenizer_round_trips_and_has_special_tokens(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) < 1024
    for text in ["Capitalize:\nsun\nSun", "any text: Ünïcode, digits 123 and tabs\t!", ""]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # a word and its capitalized form differ in one (first-letter) token: what makes the task learnable
    assert tokenizer.tokenize("sun")[1:] == tokenizer.tokenize("Sun")[1:]


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": "Repeat:\nsun"}, {"role": "assistant", "content": "sun"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == \
        "<|bos|><|user|>Repeat:\nsun<|eos|><|assistant|>sun<|eos|>"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|eos|><|assistant|>")


def _greedy(model, tokenizer, prompt: str) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_transformers_loads_a_pretrained_llama(model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    # pretraining taught copying and lowercasing, not the quickstart task
    assert _greedy(model, tokenizer, "Repeat:\nriver\n") == "river"
    assert _greedy(model, tokenizer, "Lowercase:\nTiger\n") == "tiger"
    assert _greedy(model, tokenizer, "Capitalize:\nriver\n") != "River"


def _batch(tokenizer, records):
    """Right-padded ids, attention mask and completion-only labels (the engine's prompt_completion)."""
    import torch

    rows = [(tokenizer(r["prompt"])["input_ids"],
             tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
            for r in records]
    width = max(len(p) + len(c) for p, c in rows)
    pad = [width - len(p) - len(c) for p, c in rows]
    ids = torch.tensor([p + c + [tokenizer.pad_token_id] * n for (p, c), n in zip(rows, pad)])
    mask = torch.tensor([[1] * (len(p) + len(c)) + [0] * n for (p, c), n in zip(rows, pad)])
    labels = torch.tensor([[-100] * len(p) + c + [-100] * n for (p, c), n in zip(rows, pad)])
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


@pytest.mark.integration
def test_lora_learns_the_quickstart_task(model_dir, tokenizer, tmp_path):
    """The point of the pretraining: a short LoRA run on q/v cuts the validation loss by more than half."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = generate("capitalization", tmp_path)
    train, valid = read_jsonl(paths["train"]), _batch(tokenizer, read_jsonl(paths["valid"]))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        before = model(**valid).loss.item()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    rng = random.Random(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra OpenMP threads only slow this down on a busy machine
    try:
        for _ in range(60):
            model(**_batch(tokenizer, rng.sample(train, 8))).loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        after = model(**valid).loss.item()
    assert after < 0.4 * before, (before, after)


def test_bitsandbytes_nf4_loads_on_cpu(model_dir, tokenizer):
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, local_files_only=True)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert _greedy(model, tokenizer, "Repeat:\nriver\n") == "river"


@pytest.mark.mlx
def test_mlx_lm_loads_it(model_dir):
    pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'specc[mlx]')")
    mlx_lm = pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install 'specc[mlx]')")

    model, tokenizer = mlx_lm.load(str(model_dir))
    assert tokenizer.eos_token_id == 2
    text = mlx_lm.generate(model, tokenizer, prompt=tokenizer.encode("Repeat:\nriver\n"), max_tokens=5)
    assert text == "river"


def test_a_cache_written_by_an_older_generator_is_regenerated(tmp_path):
    """A generator change without a version bump must not serve stale examples (it once did)."""
    paths = resolve_builtin_data("builtin:capitalization", tmp_path)
    fresh = paths["train"].read_text()
    paths["train"].write_text('{"completion": "Old Style", "prompt": "Capitalize: old style\\n"}\n')
    again = resolve_builtin_data("builtin:capitalization", tmp_path)
    assert again["train"].read_text() == fresh
