"""Generation through both backends on the builtin tiny model, and task scoring inside real runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backends import available, load_backend
from backends.protocol import GenerationSettings, LoraSettings, ModelSettings, OptimizerSettings
from tests.test_cli import REPO, specc

pytest.importorskip("transformers")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def builtin():
    from specc.data.jsonl import read_examples
    from specc.data.sources import load_tokenizer, resolve_data, resolve_model_path
    from specc.data.tokenize import prompt_token_ids

    model = resolve_model_path("builtin:tiny-llama")
    tok = load_tokenizer(model)
    examples = read_examples(resolve_data("builtin:capitalization", "test"), "prompt_completion")[:24]
    return model, tok, examples, prompt_token_ids(tok, [e["prompt"] for e in examples])


def _backend(name, model):
    be = load_backend(name)
    be.setup(ModelSettings(path=model, quantization="none", device="cpu"),
             LoraSettings(rank=4, alpha=8, target_modules=("q_proj", "v_proj")), OptimizerSettings(), 0)
    return be


@pytest.mark.skipif(not {"torch", "mlx"} <= set(available()), reason="needs both backends")
def test_greedy_outputs_are_the_same_strings_on_torch_and_mlx(builtin):
    model, tok, examples, prompts = builtin
    settings = GenerationSettings(max_new_tokens=8, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id or 0,
                                  batch_size=8)
    outs = {name: [tok.decode(ids) for ids in _backend(name, model).generate(prompts, settings)]
            for name in ("torch", "mlx")}
    assert outs["torch"] == outs["mlx"]
    assert len(outs["torch"]) == 24 and any(outs["torch"])


def test_generation_changes_nothing_training_sees(builtin):
    import torch

    model, tok, _, prompts = builtin
    be = _backend("torch", model)
    be.model.train()
    before = torch.get_rng_state().clone()
    weights = {n: p.detach().clone() for n, p in be.trainable}
    be.generate(prompts[:4], GenerationSettings(max_new_tokens=4, temperature=0.8, seed=3,
                                                eos_ids=(tok.eos_token_id,), pad_id=0))
    assert torch.equal(before, torch.get_rng_state()) and be.model.training
    assert all(torch.equal(weights[n], p) for n, p in be.trainable)


def _quickstart(tmp_path, steps=40, **evaluation) -> Path:
    text = (REPO / "specs" / "quickstart.yaml").read_text().replace("max_steps: 200", f"max_steps: {steps}")
    text = text.replace("eval_every: 25", "eval_every: 10").replace("checkpoint_every: 50", "checkpoint_every: 20")
    text = text.replace("warmup_steps: 100", "warmup_steps: 5")
    for old, new in evaluation.items():
        text = text.replace(old, new)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "quickstart.yaml"
    path.write_text(text)
    return path


def _steps(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x and "event" not in x]


def test_scoring_during_training_leaves_the_training_bit_identical(tmp_path):
    """`every`: the task is scored every 10 steps; the losses are exactly those of a run that never scores."""
    plain = _quickstart(tmp_path / "a")
    scored = _quickstart(tmp_path / "b", **{"      normalize: [strip]": "      normalize: [strip]\n      every: 10\n"
                                                                        "      every_limit: 16"})
    for spec in (plain, scored):
        r = specc("run", str(spec), "--backend", "torch", cwd=spec.parent, env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = (p.parent / "runs" / "quickstart" / "main" for p in (plain, scored))
    assert [m["loss"] for m in _steps(a)] == [m["loss"] for m in _steps(b)]
    scores = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()
              if "eval.capitalize" in x and '"final"' not in x]
    assert [s["step"] for s in scores] == [10, 20, 30, 40] and all(s["eval_n"] == 16 for s in scores)
    summary = json.loads((b / "summary.json").read_text())
    assert summary["eval"]["capitalize"]["n"] == 200 and summary["eval"]["capitalize"]["adapter"].startswith("best")


def test_select_best_by_a_task_metric_decides_best(tmp_path):
    spec = _quickstart(tmp_path, **{"      normalize: [strip]": "      normalize: [strip]\n      every: 10\n      every_limit: 16",
                                    "  control: true\n": "  control: true\n  select_best_by: eval.capitalize.exact_match\n"})
    r = specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart" / "main"
    scores = {json.loads(x)["step"]: json.loads(x)["eval.capitalize.exact_match"]
              for x in (run / "metrics.jsonl").read_text().splitlines() if "eval.capitalize" in x and '"final"' not in x}
    note = json.loads((run / "best" / "specc_adapter.json").read_text())
    best = max(scores.values())
    assert note["eval.capitalize.exact_match"] == best and note["step"] == min(s for s, v in scores.items() if v == best)


def test_quickstart_judges_the_task_against_its_control(tmp_path):
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    r = specc("run", "specs/quickstart.yaml", "--all", cwd=tmp_path, env={"OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    r = specc("report", "quickstart", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "hypothesis CONFIRMED" in r.stdout and "over the control → CONFIRMED" in r.stdout
    runs = tmp_path / "runs" / "quickstart"
    trained = json.loads((runs / "main" / "eval" / "capitalize.json").read_text())
    control = json.loads((runs / "control_tiny" / "eval" / "capitalize.json").read_text())
    assert trained["n"] == control["n"] == 200 and trained["mean"] - control["mean"] >= 0.5
    assert control["adapter"].startswith("base model") and trained["decoding"]["temperature"] == 0.0
    samples = [json.loads(x) for x in (runs / "main" / "eval" / "capitalize.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 200 and set(samples[0]) == {"index", "prompt", "reference", "prediction", "score"}
    report = (runs / "report.md").read_text()
    assert "## Task scores" in report and "control_tiny" in report
    assert (runs / "plots" / "eval_capitalize_exact_match.png").is_file()
