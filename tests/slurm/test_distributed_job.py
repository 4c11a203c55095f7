"""The multi-GPU job script's launch (srun, one `specc run` per rank) on the local cluster, with CPU ranks.

The local node has no GPUs, so the spec's catalog pretends its partition has two, and the test drops the
`--gres` line before submitting; everything else is the compiled `distributed` script: srun starts two
ranks that meet over gloo, a SIGTERM to the batch shell reaches both as SIGUSR1, both checkpoint and exit
75, the job requeues itself and the resumed run finishes with every step trained once.
"""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.slurm_helpers import job_info, run as slurm_run, sbatch, wait_for, wait_for_job_done

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
STEPS = 200   # long enough that the signal lands mid-run even on a quiet machine


def test_two_rank_job_is_preempted_requeued_and_finishes(slurm_cluster, tmp_path):
    from tests.tiny_llama import make_tiny_llama

    make_tiny_llama(tmp_path / "model", tokenizer="words")
    with open(tmp_path / "train.jsonl", "w") as fh:
        for i in range(64):
            words = [f"w{(i * 7 + k) % 20}" for k in range(4)]
            fh.write(json.dumps({"prompt": " ".join(words), "completion": " ".join(reversed(words))}) + "\n")
    (tmp_path / "clusters.yaml").write_text(
        'clusters:\n  local:\n    partitions:\n'
        '      debug: {max_time: "00:30:00", gpus_per_node: 2, cpus_per_node: 2, mem_gb: 20, nodes: 1}\n')
    spec = {"experiment": "ddp", "hypothesis": {"statement": "two ranks under srun"},
            "model": {"path": str(tmp_path / "model"), "size": "tiny", "quantization": "none",
                      "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}},
            "data": {"train": str(tmp_path / "train.jsonl"), "valid": str(tmp_path / "train.jsonl"),
                     "format": "prompt_completion", "max_length": 32, "packing": False},
            "training": {"max_steps": STEPS, "batch_size": 2, "grad_accum": 2, "lr": 0.01,
                         "schedule": {"kind": "constant", "warmup_steps": 0}, "eval_every": 1000, "eval_examples": 8,
                         "checkpoint_every": 1000, "early_stopping": {"enabled": False}},
            "resources": {"cluster": "local", "partition": "debug", "gpus": 2, "cpus": 2, "mem": "2G", "time": "00:10:00"},
            "backend": "torch"}
    (tmp_path / "ddp.yaml").write_text(json.dumps(spec))
    exe = Path(sys.executable).parent / "specc"
    subprocess.run([str(exe), "compile", "ddp.yaml"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    script = (tmp_path / "generated/ddp/main/train.sbatch").read_text()
    assert "srun --ntasks=$((${SLURM_NNODES:-1} * 2)) --ntasks-per-node=2 --cpus-per-task=1" in script
    assert "trap 'forward TERM USR1' TERM" in script
    (tmp_path / "job.sbatch").write_text("".join(l for l in script.splitlines(True) if "--gres=" not in l))
    (tmp_path / "runs/ddp/logs").mkdir(parents=True)

    env_before = os.environ.get("SPECC")
    os.environ["SPECC"] = str(exe)
    try:
        jid = sbatch("job.sbatch", cwd=tmp_path)
    finally:
        os.environ.pop("SPECC") if env_before is None else os.environ.__setitem__("SPECC", env_before)
    run_dir, log = tmp_path / "runs/ddp/main", tmp_path / f"runs/ddp/logs/main-{jid}.out"
    try:
        def steps():
            try:
                return [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
                        if '"loss"' in l]
            except (OSError, ValueError):
                return []
        wait_for(lambda: len(steps()) >= 3, timeout=420, poll=0.3, what="the two ranks to train 3 steps")
        slurm_run("scancel", "--signal=TERM", "--batch", jid)
        wait_for(lambda: int((job_info(jid) or {}).get("Restarts", 0)) >= 1, timeout=120, what="the requeue")
        info = wait_for_job_done(jid, timeout=420)
        text = log.read_text()
        assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), text
        assert steps() == list(range(1, STEPS + 1)), text
        assert "data parallel: rank 0 of 2; 2 micro-batch(es) per rank, 4 per step" in text
        assert "specc: SIGTERM received, asking the trainer to checkpoint" in text
        # srun reports each task, or both at once ("tasks 0-1: Exited with exit code 75").
        assert re.search(r"tasks 0-1: Exited with exit code 75", text) or (
            "task 0: Exited with exit code 75" in text and "task 1: Exited with exit code 75" in text), text
        assert "specc: checkpointed (exit 75); requeueing" in text
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["status"], summary["steps"], summary["restarts"]) == ("completed", STEPS, 1)
    finally:
        slurm_run("scancel", jid, check=False)
