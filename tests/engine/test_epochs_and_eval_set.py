"""`epochs` means the same number of steps in plan, compile and run; the validation set is the same examples for every run.

Real files: a tiny Llama with its tokenizer, a variable-length prompt/completion dataset, the real
planner, the plan's data analysis, the run's data preparation and a short real run.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from tests.tiny_llama import make_tiny_llama  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("epochs")
    make_tiny_llama(root / "model")
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("valid", 90)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for _ in range(n):
                words = rng.choice(WORDS, size=int(rng.integers(1, 12)))
                fh.write(json.dumps({"prompt": " ".join(words) + " ->", "completion": " " + words[0].upper()}) + "\n")
    return root


@pytest.fixture(autouse=True)
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)   # compiled configs name paths relative to where compile runs


def _spec(root: Path, name: str, *, packing: bool, batch_size: int = 4, eval_examples: int | None = 40,
          epochs: float = 0.25, grad_accum: int = 1) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(f"""
experiment: {name}
hypothesis: {{statement: steps agree}}
model: {{path: model, quantization: none, lora: {{rank: 4, alpha: 8}}}}
data: {{train: train.jsonl, valid: valid.jsonl, format: prompt_completion, max_length: 256, packing: {str(packing).lower()}}}
training: {{epochs: {epochs}, batch_size: {batch_size}, grad_accum: {grad_accum}, lr: 1.0e-3, eval_every: 1000,
           eval_examples: {'null' if eval_examples is None else eval_examples}, checkpoint_every: 1000,
           schedule: {{kind: constant, warmup_steps: 0}}, early_stopping: {{enabled: false}}}}
resources: {{cluster: local, partition: debug, time: "00:20:00"}}
""")
    return path


def _compiled(spec: Path):
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    return plan_experiment(load_spec(spec)).runs[0]


def _planned(run, root: Path):
    from specc.lifecycle.analysis import analyze_data, clear_caches

    clear_caches()
    return analyze_data(run.config, root / "model")


def _prepared(run, root: Path, monkeypatch):
    from specc.engine.config import from_dict
    from specc.engine.prepare import prepare_data

    cfg = from_dict(run.config, "test")
    return cfg, prepare_data(cfg, Path("model"))


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("epochs,grad_accum", [(0.25, 1), (1.5, 3)])
def test_plan_compile_and_run_agree_on_the_steps_of_epochs(workdir, monkeypatch, packing, epochs, grad_accum):
    run = _compiled(_spec(workdir, f"ep-{packing}-{grad_accum}", packing=packing, epochs=epochs, grad_accum=grad_accum))
    compiled = run.steps.steps
    planned = _planned(run, workdir).steps
    cfg, data = _prepared(run, workdir, monkeypatch)
    assert compiled == planned == data.total_steps, (compiled, planned, data.total_steps)
    assert run.steps.source.startswith("counted:") and run.config["training"]["total_steps_key"]
    # ... and it is the packed rows' count: an epoch is a pass over the rows, not one example per row.
    rows = len(data.train_plan.rows(0))
    if packing:
        assert rows < 300 / 2, rows               # several examples share a row
    else:
        assert rows == 300
    per_epoch = math.ceil(rows / 4)
    assert abs(compiled - per_epoch * epochs / grad_accum) <= 1


def test_a_real_run_trains_the_counted_steps(workdir, monkeypatch):
    from rich.console import Console

    from backends import load_backend
    from specc.engine.loop import RunOptions, train
    from specc.engine.session import open_session

    run = _compiled(_spec(workdir, "ep-run", packing=True))
    cfg, _ = _prepared(run, workdir, monkeypatch)
    cfg = replace(cfg, output_dir=workdir / "runs" / "ep-run")
    summary = train(open_session(cfg, RunOptions(backend="torch"), Console(file=io.StringIO()),
                                 backend=load_backend("torch")))
    assert summary["status"] == "completed"
    assert summary["steps"] == summary["total_steps"] == run.steps.steps
    assert summary["data"]["steps_source"].startswith("counted:")


def test_compile_without_the_data_keeps_the_committed_count(workdir, tmp_path):
    """A machine without the data (CI's `compile --check`) takes the count an earlier compile made from it."""
    from specc.emit.writer import committed_step_counts
    from specc.plan.steps import count_steps
    from specc.spec.validate import load_spec

    spec = _spec(workdir, "ep-ci", packing=True)
    run = _compiled(spec)
    out = tmp_path / "generated" / "ep-ci" / "main"
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(run.config))
    elsewhere = tmp_path / "elsewhere"              # the spec without its model and data beside it
    elsewhere.mkdir()
    loaded = load_spec(spec)
    resolved = loaded.spec.model_copy(update={"training": loaded.spec.training.model_copy(update={"batch_size": 4,
                                                                                                 "grad_accum": 1}),
                                              "data": loaded.spec.data.model_copy(update={"max_length": 256})})
    assert count_steps(resolved, elsewhere).steps is None      # not here, nothing declared: the run will count
    kept = count_steps(resolved, elsewhere, committed_step_counts(tmp_path / "generated"))
    assert (kept.steps, kept.source) == (run.steps.steps, run.steps.source)


def test_validation_is_the_same_examples_for_every_batch_size(workdir, monkeypatch):
    """eval_batches once counted batches: runs with batch 2 and 8 were validated on different examples."""
    seen = {}
    for batch_size in (2, 8):
        run = _compiled(_spec(workdir, f"val-b{batch_size}", packing=True, batch_size=batch_size, eval_examples=40))
        _, data = _prepared(run, workdir, monkeypatch)
        examples = data.eval_examples("valid")
        batches = data.eval_batches("valid")
        seen[batch_size] = (examples, sum(b.n_target_tokens for b in batches), sum(b.n_tokens for b in batches))
        assert len(examples) == 40
        assert _planned(run, workdir).eval_batches == len(batches)
    assert seen[2] == seen[8]
    run = _compiled(_spec(workdir, "val-all", packing=True, eval_examples=None))
    _, data = _prepared(run, workdir, monkeypatch)
    assert len(data.eval_examples("valid")) == 90


def test_eval_batches_in_a_spec_points_to_eval_examples(tmp_path):
    from specc.errors import SpecError
    from specc.spec.validate import load_spec

    path = _spec(tmp_path, "old", packing=True)
    path.write_text(path.read_text().replace("eval_examples: 40", "eval_batches: 8"))
    with pytest.raises(SpecError, match="eval_batches was replaced by eval_examples"):
        load_spec(path)
