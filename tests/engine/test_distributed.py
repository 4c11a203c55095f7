"""Data-parallel LoRA training on CPU (gloo, 2 processes under torchrun) equals one process with the same global batch.

The 2-rank run has grad_accum 2 per rank, the 1-process run grad_accum 4: the same 4 micro-batches per
optimizer step. Gradients are summed across ranks before clipping, so after N steps the adapters agree
to float tolerance, the logged losses agree, and only rank 0 writes files. A signal that reaches one rank
stops both at the same step with a checkpoint; resuming on 2 ranks still lands on the 1-process weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def spec(root: Path, experiment: str, grad_accum: int) -> Path:
    data = {
        "experiment": experiment,
        "hypothesis": {"statement": "data parallel equals one process"},
        "model": {"path": str(root / "model"), "size": "tiny", "quantization": "none",
                  "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"train": str(root / "train.jsonl"), "valid": str(root / "train.jsonl"),
                 "format": "prompt_completion", "max_length": 32, "packing": False},
        "training": {"max_steps": STEPS, "batch_size": 2, "grad_accum": grad_accum, "lr": 0.01,
                     "schedule": {"kind": "constant", "warmup_steps": 0}, "eval_every": 2, "eval_examples": 12,
                     "checkpoint_every": 2, "early_stopping": {"enabled": False}},
        "backend": "torch",
    }
    path = root / f"{experiment}.yaml"
    path.write_text(json.dumps(data))   # JSON is YAML
    return path


def env(**extra) -> dict:
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID")}
    return dict(out, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)


def run_one(root: Path, spec_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specc.cli", "run", str(spec_path)], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=600)


def run_two(root: Path, spec_path: Path, entry: list[str] | None = None) -> subprocess.CompletedProcess:
    entry = entry or ["-m", "specc.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", *entry,
           "run", str(spec_path)]
    return subprocess.run(cmd, cwd=root, env=env(), capture_output=True, text=True, timeout=600)


def adapter(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_adapter(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert max(float(np.abs(v).max()) for k, v in a.items() if "lora_B" in k) > 1e-3   # it did train


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The tiny model, the data, and the 1-process run (grad_accum 4)."""
    root = tmp_path_factory.mktemp("ddp")
    from tests.tiny_llama import make_tiny_llama

    make_tiny_llama(root / "model", tokenizer="words")
    rng = np.random.default_rng(0)
    with open(root / "train.jsonl", "w") as fh:
        for _ in range(64):
            words = [f"w{i}" for i in rng.integers(0, 20, size=4)]
            fh.write(json.dumps({"prompt": " ".join(words), "completion": " ".join(reversed(words))}) + "\n")
    proc = run_one(root, spec(root, "one", grad_accum=4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_two_ranks_equal_one_process_with_the_same_global_batch(baseline):
    root = baseline
    proc = run_two(root, spec(root, "two", grad_accum=2))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = root / "runs/one/main", root / "runs/two/main"
    assert_same_adapter(adapter(one), adapter(two))
    m1, m2 = metrics(one), metrics(two)
    steps = [m["step"] for m in m2 if "loss" in m and "event" not in m]
    assert steps == list(range(1, STEPS + 1))                        # rank 0 alone writes metrics: once per step
    for a, b in zip(m1, m2):
        for key in ("loss", "val_loss", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)
        if "tokens" in a and "event" not in a:
            assert a["tokens"] == b["tokens"]                        # global tokens per step
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert (s2["status"], s2["steps"], s2["tokens"]) == ("completed", STEPS, s1["tokens"])
    assert s2["best_val_loss"] == pytest.approx(s1["best_val_loss"], rel=1e-5)
    out = proc.stdout + proc.stderr
    assert "data parallel: rank 0 of 2; 2 micro-batch(es) per rank, 4 per step" in out
    assert "data parallel: rank 1 of 2" not in out                   # rank 1 is quiet


def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_the_resume_stays_exact(baseline):
    root = baseline
    # Only rank 1 sends itself SIGUSR1 (after step 2): both ranks agree at the next step and checkpoint.
    entry = root / "rank1_signal.py"
    entry.write_text("import os, sys\n"
                     "if os.environ.get('RANK') == '1':\n"
                     "    os.environ['SPECC_FAULT'] = 'usr1@step:2'\n"
                     "from specc.cli import main\n"
                     "sys.argv[0] = 'specc'\n"
                     "main()\n")
    path = spec(root, "two-resumed", grad_accum=2)
    proc = run_two(root, path, entry=[str(entry)])
    assert proc.returncode != 0                                       # torchrun reports the workers' exit 75 as a failure
    run_dir = root / "runs/two-resumed/main"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("interrupted", 3), summary
    assert summary["stop_reason"] == "a signal to another rank received; checkpointed at step 3"
    assert (run_dir / "checkpoints/step_0000003/manifest.json").is_file()

    proc = run_two(root, path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from runs/two-resumed/main/checkpoints/step_0000003 at step 3" in proc.stdout + proc.stderr
    steps = [m["step"] for m in metrics(run_dir) if "loss" in m and "event" not in m]
    assert steps == list(range(1, STEPS + 1))
    assert_same_adapter(adapter(root / "runs/one/main"), adapter(run_dir))
