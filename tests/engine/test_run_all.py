"""`specc run SPEC --all`: every run of a sweep locally, one after another, the control run included."""
from __future__ import annotations

import json

import pytest

from tests.tiny_llama import make_tiny_llama
from tests.test_cli import specc

pytest.importorskip("transformers")


def test_run_all_trains_the_sweep_and_evaluates_the_control(tmp_path):
    make_tiny_llama(tmp_path / "model", tokenizer="words")
    line = json.dumps({"text": "w1 w2 w3 w4 w5 w6"})
    for split in ("train", "valid"):
        (tmp_path / f"{split}.jsonl").write_text((line + "\n") * 16)
    (tmp_path / "sweep.yaml").write_text("""experiment: all
hypothesis: {statement: every run runs}
model: {path: model, size: tiny, quantization: none, lora: {rank: 2, alpha: 4}}
data: {train: train.jsonl, valid: valid.jsonl, format: text, max_length: 32}
training: {max_steps: 3, batch_size: 2, grad_accum: 1, eval_every: 3, eval_examples: 8, checkpoint_every: 3,
           schedule: {kind: constant, warmup_steps: 0}}
resources: {cluster: local, partition: debug, time: "00:20:00"}
sweep: {matrix: {model.lora.rank: [2, 4]}, name: "r{model.lora.rank}", control: true}
""")
    r = specc("run", "sweep.yaml", "--all", "--backend", "torch", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--all: r2: exit 0, r4: exit 0, control_tiny: exit 0" in r.stderr
    summaries = {name: json.loads((tmp_path / "runs" / "all" / name / "summary.json").read_text())
                 for name in ("r2", "r4", "control_tiny")}
    assert [summaries[n]["status"] for n in summaries] == ["completed"] * 3
    assert summaries["r2"]["steps"] == summaries["r4"]["steps"] == 3
    control = summaries["control_tiny"]
    assert control["kind"] == "control" and control["steps"] == 0 and control["val_examples"] == 8
    assert control["device"]["params_trainable"] == 0 and "none" in control["device"]["lora_layers"]   # no unused LoRA
    assert summaries["r2"]["device"]["params_trainable"] < summaries["r4"]["device"]["params_trainable"]
    # the control's base loss is the adapters' step-0 loss (B = 0): the same examples, the same model
    first_val = [json.loads(x) for x in (tmp_path / "runs" / "all" / "r2" / "metrics.jsonl").read_text().splitlines()
                 if "val_loss" in x][0]
    assert control["val_loss"] == pytest.approx(first_val["val_loss"], rel=1e-5)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="the warning is for mlx[cpu] on Linux")
def test_mlx_on_linux_warns_once_that_it_is_slow(tmp_path):
    pytest.importorskip("mlx_lm")
    make_tiny_llama(tmp_path / "model", tokenizer="words")
    (tmp_path / "train.jsonl").write_text((json.dumps({"text": "w1 w2 w3"}) + "\n") * 8)
    (tmp_path / "spec.yaml").write_text("""experiment: slow
hypothesis: {statement: mlx on linux is slow}
model: {path: model, quantization: none}
data: {train: train.jsonl, format: text, max_length: 16}
training: {max_steps: 2, batch_size: 2, grad_accum: 1, schedule: {kind: constant, warmup_steps: 0}}
resources: {cluster: local, partition: debug, time: "00:20:00"}
""")
    r = specc("run", "spec.yaml", "--backend", "mlx", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("about 35× slower than the torch backend") == 1
