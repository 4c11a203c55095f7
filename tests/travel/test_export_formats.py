"""`specc export`: the adapters of the quickstart trained on torch and on MLX, as PEFT, mlx-lm and merged models.

The merged model must load with transformers.AutoModelForCausalLM.from_pretrained and with mlx_lm.load and
generate the same greedy text as base + adapter in the same library (transformers + peft's PeftModel on the
PEFT export, mlx-lm with the mlx export as adapter_path). Tolerance: identical greedy tokens (GREEDY_TOKENS
new tokens on each of PROMPTS validation prompts) and next-token logits within LOGITS_ATOL (measured:
7e-6 on the builtin model, float32). An nf4 (QLoRA) run's merged model holds the dequantized base and
matches base (4-bit) + adapter.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.travel.runs import quickstart, specc

pytestmark = pytest.mark.integration

PROMPTS, GREEDY_TOKENS, LOGITS_ATOL = 5, 8, 1e-4


@pytest.fixture(scope="module")
def base() -> Path:
    from specc.data.sources import resolve_model_path

    return resolve_model_path("builtin:tiny-llama")


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    from specc.data.sources import resolve_data

    path = resolve_data("builtin:capitalization", "valid")
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()[:PROMPTS]]


def _transformers_greedy(model, tok, prompts):
    import torch

    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
            logits = model(ids).logits[0, -1]
        out.append((tok.decode(gen[0, ids.shape[1]:]), logits))
    return out


def _transformers(base: Path, merged: Path, peft_dir: Path, prompts, quantization_config=None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(merged))
    kwargs = {"quantization_config": quantization_config} if quantization_config else {}
    plain = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, **kwargs).eval()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, **kwargs),
                                    str(peft_dir)).eval()
    if quantization_config:   # compute as training did, not in bitsandbytes' bf16 CPU inference layout
        from backends.torch_nf4 import keep_trainable_layout

        keep_trainable_layout(plain), keep_trainable_layout(ref)
    fused = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    return (_transformers_greedy(fused, tok, prompts), _transformers_greedy(ref, tok, prompts),
            _transformers_greedy(plain, tok, prompts))


def _mlx_greedy(base: Path, merged: Path, mlx_dir: Path, prompts):
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    greedy = make_sampler(temp=0.0)
    fused, tok = load(str(merged))
    ref, ref_tok = load(str(base), adapter_path=str(mlx_dir))
    return ([generate(fused, tok, p, max_tokens=GREEDY_TOKENS, sampler=greedy) for p in prompts],
            [generate(ref, ref_tok, p, max_tokens=GREEDY_TOKENS, sampler=greedy) for p in prompts])


def _export(run_dir: Path, fmt: str, out: Path, *extra) -> str:
    r = specc("export", run_dir, "--format", fmt, "--out", out, *extra, cwd=out.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == str(out)
    return r.stderr


@pytest.mark.parametrize("trained", ["torch", "mlx"])
def test_merged_model_loads_everywhere_and_generates_like_base_plus_adapter(scenarios, base, prompts, tmp_path,
                                                                            trained):
    run = scenarios[trained].run_dir
    for fmt in ("peft", "mlx"):
        log = _export(run, fmt, tmp_path / fmt)
        assert f"as {fmt} to" in log
    log = _export(run, "merged", tmp_path / "merged")
    assert "checked the merged model: probe loss" in log and "dequantized" not in log
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config and "quantization" not in config
    note = json.loads((tmp_path / "merged" / "specc_merged.json").read_text())
    assert note["exported_from"] == str(run / "best") and note["merged"]["probe"]["relative_diff"] < 1e-4

    merged, reference, plain = _transformers(base, tmp_path / "merged", tmp_path / "peft", prompts)
    assert [t for t, _ in merged] == [t for t, _ in reference], "transformers: merged vs base + PeftModel"
    assert max(float((a - b).abs().max()) for (_, a), (_, b) in zip(merged, reference)) < LOGITS_ATOL
    assert [t for t, _ in merged] != [t for t, _ in plain], "the adapter changes nothing: the test would prove nothing"
    fused, adapted = _mlx_greedy(base, tmp_path / "merged", tmp_path / "mlx", prompts)
    assert fused == adapted, "mlx_lm: merged vs base + adapter_path"
    word = prompts[0].split("\n")[1]
    assert fused[0].startswith(word.capitalize()), (prompts[0], fused[0])   # what the quickstart taught it


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_4bit_base_is_dequantized_and_the_command_says_so(scenarios, base, prompts, tmp_path, backend):
    cwd = tmp_path / "run"
    spec = quickstart(cwd, steps=20, experiment="qlora", **{"quantization: none": "quantization: nf4"})
    r = specc("run", spec, "--backend", backend, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    run = cwd / "runs" / "qlora" / "main"
    log = _export(run, "merged", tmp_path / "merged")
    expected = "bitsandbytes NF4 (double quantization) -> float32" if backend == "torch" else "MLX affine 4-bit"
    assert "the nf4 base was dequantized" in log and expected in log, log
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config and "quantization" not in config
    if backend != "torch":
        return   # mlx-lm has no NF4 to compare with; the export's own check compared it with the 4-bit training model
    import torch
    from transformers import BitsAndBytesConfig

    _export(run, "peft", tmp_path / "peft")
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                             bnb_4bit_use_double_quant=True)
    merged, reference, _ = _transformers(base, tmp_path / "merged", tmp_path / "peft", prompts, nf4)
    assert [t for t, _ in merged] == [t for t, _ in reference], "merged (dequantized) vs NF4 base + PeftModel"
    assert max(float((a - b).abs().max()) for (_, a), (_, b) in zip(merged, reference)) < 1e-3


def test_export_refuses_to_overwrite_and_says_what_is_missing(scenarios, tmp_path):
    run = scenarios["torch"].run_dir
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = specc("export", run, "--format", "peft", "--out", out, cwd=tmp_path)
    assert r.returncode == 1 and "already exists and is not empty; nothing was overwritten" in r.stderr, r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"

    r = specc("export", tmp_path, "--format", "peft", "--out", tmp_path / "x", cwd=tmp_path)
    assert r.returncode == 1 and "not a run directory" in r.stderr and not (tmp_path / "x").exists()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    shutil.rmtree(unfinished / "adapter")
    r = specc("export", unfinished, "--adapter", "final", "--format", "mlx", "--out", tmp_path / "y", cwd=tmp_path)
    assert r.returncode == 1 and "has no final adapter yet" in r.stderr and "--adapter best" in r.stderr, r.stderr
    r = specc("export", run, "--format", "gguf", "--out", tmp_path / "z", cwd=tmp_path)
    assert r.returncode == 1 and "use one of peft, mlx, merged" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
