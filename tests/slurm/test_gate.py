"""The test-stage gate, jobs.json and the status rows, on synthetic run directories (no cluster needed)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from specc.slurm import client, status
from specc.slurm.gate import check_test_stage, read_verdict, write_verdict
from specc.slurm.state import JobRecord, Jobs, load_jobs, save_jobs


def make_test_dir(d: Path, losses, *, status_="completed", tokens_per_s=50.0, reason="reached 6 steps") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = [{"step": 0, "val_loss": 5.0, "val_tokens": 10}]
    for i, loss in enumerate(losses, 1):
        rec = {"step": i, "loss": loss, "lr": 0.01, "step_s": 0.5}
        if loss is None:
            rec["non_finite"] = ["loss"]
        lines.append(rec)
    lines.append({"step": len(losses), "event": status_, "reason": reason})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (d / "summary.json").write_text(json.dumps({"status": status_, "stop_reason": reason, "steps": len(losses),
                                                "total_steps": len(losses), "tokens_per_s": tokens_per_s, "restarts": 0}))
    return d


def test_gate_passes_a_finished_test_with_a_falling_loss(tmp_path):
    v = check_test_stage(make_test_dir(tmp_path / "main.test", [5.0, 4.8, 4.9, 4.5, 4.4, 4.2]))
    assert v.ok and v.reasons == []
    assert v.facts["first_third_loss"] == pytest.approx(4.9) and v.facts["last_third_loss"] == pytest.approx(4.3)
    write_verdict(v)
    assert read_verdict(tmp_path / "main.test")["ok"] is True


@pytest.mark.parametrize("losses, kw, reason", [
    ([5.0, 5.1, 5.2, 5.3], {}, "the training loss did not fall: mean of the last third 5.3000 ≥ mean of the first third 5.0000"),
    ([5.0, None, 4.0, 3.0], {"status_": "diverged", "reason": "loss is nan at step 2"}, "the test stage diverged: loss is nan at step 2"),
    ([5.0, None, 4.0, 3.0], {}, "the training loss is not finite at step 2"),
    ([5.0, 4.0], {}, "only 2 training step(s) logged in metrics.jsonl; at least 3 are needed"),
    ([5.0, 4.0, 3.0], {"tokens_per_s": None}, "throughput was not measured (tokens_per_s = None)"),
    ([5.0, 4.0, 3.0], {"status_": "interrupted", "reason": "SIGTERM received"}, "the test stage interrupted: SIGTERM received"),
])
def test_gate_refuses_with_a_reason(tmp_path, losses, kw, reason):
    v = check_test_stage(make_test_dir(tmp_path / "t", losses, **kw))
    assert not v.ok and reason in v.reason


def test_gate_refuses_an_unfinished_test(tmp_path):
    v = check_test_stage(tmp_path / "missing.test")
    assert not v.ok and "the test stage has not finished: no" in v.reason


def test_gate_counts_a_resumed_steps_last_line_once(tmp_path):
    d = make_test_dir(tmp_path / "t", [5.0, 4.9, 4.8, 4.7, 4.6, 4.5])
    with open(d / "metrics.jsonl", "a") as fh:   # a torn line from a kill mid-write is ignored
        fh.write('{"step": 7, "lo')
    assert check_test_stage(d).ok


def _specc(*args, cwd):
    exe = shutil.which("specc", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "specc.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200", NO_COLOR="1"))


def test_specc_gate_command(tmp_path):
    cfg = {"format_version": 1, "experiment": "e", "run": "main", "kind": "train", "backend": "auto",
           "output_dir": "runs/e/main", "model": {"path": "/m"}, "data": {"train": "/d.jsonl"},
           "training": {"max_steps": 10, "total_steps": 10, "batch_size": 1, "grad_accum": 1},
           "schedule": None, "stages": {"test": {"max_steps": 4}}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    make_test_dir(tmp_path / "runs/e/main.test", [5.0, 5.0, 5.1, 5.2])
    proc = _specc("gate", "config.json", cwd=tmp_path)
    assert proc.returncode == 1
    assert "refusing to start the full run: the training loss did not fall" in proc.stderr
    assert read_verdict(tmp_path / "runs/e/main.test")["ok"] is False
    make_test_dir(tmp_path / "runs/e/main.test", [5.0, 4.0, 3.0, 2.0])
    proc = _specc("gate", "config.json", cwd=tmp_path)
    assert proc.returncode == 0 and "the test stage passed" in proc.stdout
    cfg["stages"] = {}                       # a control run of a sweep: nothing to gate
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    proc = _specc("gate", "config.json", cwd=tmp_path)
    assert proc.returncode == 0 and "has no test stage" in proc.stdout


def test_jobs_json_round_trip(tmp_path):
    jobs = Jobs("e")
    jobs.add("main", JobRecord("7", "test", "t0", "debug", "generated/e/main/test.sbatch", cluster="local"))
    jobs.add("main", JobRecord("8", "full", "t0", "main", "generated/e/main/train.sbatch", depends_on="7"))
    jobs.add("main", JobRecord("9", "full", "t1", "main", "generated/e/main/train.sbatch"))
    save_jobs(jobs, tmp_path)
    back = load_jobs("e", tmp_path)
    assert back.latest("main", "full").job_id == "9" and back.latest("main", "test").job_id == "7"
    raw = json.loads((tmp_path / "e/jobs.json").read_text())
    assert raw["runs"]["main"][1] == {"job_id": "8", "stage": "full", "submitted_at": "t0", "partition": "main",
                                      "script": "generated/e/main/train.sbatch", "cluster": "", "depends_on": "7"}


def test_status_rows_explain_a_blocked_full_run(tmp_path, monkeypatch):
    jobs = Jobs("e")
    jobs.add("main", JobRecord("7", "test", "t0", "debug", "s", log="runs/e/logs/main.test-7.out"))
    jobs.add("main", JobRecord("8", "full", "t0", "main", "s", depends_on="7"))
    save_jobs(jobs, tmp_path)
    make_test_dir(tmp_path / "e/main.test", [5.0, None], status_="diverged", reason="loss is nan at step 2",
                  tokens_per_s=10.0)
    records = {"7": {"JobState": "FAILED", "Reason": "NonZeroExitCode", "ExitCode": "65:0", "Restarts": "0"},
               "8": {"JobState": "PENDING", "Reason": "DependencyNeverSatisfied", "ExitCode": "0:0", "Restarts": "0"}}
    cancelled = []
    monkeypatch.setattr(client, "job_record", lambda jid: records.get(jid))
    monkeypatch.setattr(client, "scancel", lambda ids: cancelled.extend(ids))
    test_row, full_row = status.rows("e", tmp_path)
    assert (test_row.state, test_row.step, test_row.total) == ("FAILED", 2, 2)
    assert test_row.note == "diverged: loss is nan at step 2"
    assert full_row.note == "test stage failed: diverged: loss is nan at step 2 (pending forever: cancelled)"
    assert cancelled == ["8"]


def test_status_after_scontrol_forgot_the_job(tmp_path, monkeypatch):
    jobs = Jobs("e")
    jobs.add("main", JobRecord("8", "full", "t0", "main", "s"))
    save_jobs(jobs, tmp_path)
    make_test_dir(tmp_path / "e/main", [5.0, 4.0, 3.0])
    monkeypatch.setattr(client, "job_record", lambda jid: None)
    [row] = status.rows("e", tmp_path)
    assert (row.state, row.step, row.loss, row.restarts) == ("COMPLETED?", 3, 3.0, 0)
