"""`specc watch`: flags from a run's files, advice, --once, and following a run until summary.json appears."""
from __future__ import annotations

import json
import os
import threading
import time

from typer.testing import CliRunner

from specc.lifecycle.watch import (
    CONTINUE,
    EXIT_INVESTIGATE,
    INVESTIGATE,
    STOP,
    follow,
    snapshot,
)
from tests.lifecycle.run_files import step_records, write_run


def kinds(snap):
    return {f.kind for f in snap.flags}


def test_healthy_running_run(in_tmp):
    d = write_run(in_tmp / "runs", "e", "main", records=step_records(60))
    s = snapshot(d)
    assert s.status == "running" and s.step == 60 and s.total_steps == 100 and not s.flags and s.advice == CONTINUE
    assert s.eta_s is not None and round(s.tokens_per_s) == 10_000


def test_nan_and_oom(in_tmp):
    recs = step_records(20) + [{"step": 21, "loss": None, "non_finite": ["loss"], "step_s": 0.1, "tokens": 1000}]
    d = write_run(in_tmp / "runs", "e", "main", records=recs)
    (in_tmp / "runs" / "e" / "logs").mkdir()
    (in_tmp / "runs" / "e" / "logs" / "main-1234.out").write_text(
        "step 20/100\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    s = snapshot(d)
    assert {"nan", "oom"} <= kinds(s) and s.advice == STOP
    assert s.log.name == "main-1234.out"
    result = _cli("watch", str(d), "--once")
    assert result.exit_code == 1 and "[STOP] oom" in result.output and "reduce the batch size" in result.output


def test_killed_process_stale_heartbeat(in_tmp):
    d = write_run(in_tmp / "runs", "e", "main", records=step_records(40))
    old = time.time() - 3600
    os.utime(d / "metrics.jsonl", (old, old))
    s = snapshot(d)
    assert "killed" in kinds(s) and s.advice == INVESTIGATE and "resumes" in s.flags[0].message
    # A finished run is never "killed".
    (d / "summary.json").write_text(json.dumps({"status": "completed", "steps": 100, "total_steps": 100}))
    assert "killed" not in kinds(snapshot(d))


def test_plateau_rise_throughput_and_memory(in_tmp):
    runs = in_tmp / "runs"
    flat = write_run(runs, "e", "flat", records=step_records(200, loss=lambda i: 1.0))
    rising = write_run(runs, "e", "rising", records=step_records(200, loss=lambda i: 1.0 + i / 100))
    slow = write_run(runs, "e", "slow", records=step_records(100, step_s=lambda i: 0.1 if i < 50 else 0.3))
    leak = write_run(runs, "e", "leak", records=step_records(100, mem=lambda i: 500 + 20 * i))
    assert "plateau" in kinds(snapshot(flat))
    assert "loss_rising" in kinds(snapshot(rising))
    assert "throughput" in kinds(snapshot(slow))
    assert "memory" in kinds(snapshot(leak))


def test_behind_the_time_window(in_tmp):
    d = write_run(in_tmp / "runs", "e", "main", records=step_records(10),
                  config={"resources": {"cluster": "local", "gpus": 0, "time": "00:10:00"}})
    started = time.time() - 300          # 10 of 100 steps in 5 minutes: 50 minutes to go
    os.utime(d / "config.json", (started, started))
    s = snapshot(d)
    assert "window" in kinds(s) and s.eta_s > 2000
    result = _cli("watch", "e/main", "--once", "--runs-dir", str(in_tmp / "runs"))
    # "investigate" exits non-zero (issue 10; it exited 0 before): 3, apart from "stop"'s 1.
    assert result.exit_code == EXIT_INVESTIGATE and "NOT on track" in result.output


def test_follow_exits_when_the_summary_appears(in_tmp):
    d = in_tmp / "runs" / "e" / "main"
    write_run(in_tmp / "runs", "e", "main", records=[])

    def writer():
        with open(d / "metrics.jsonl", "a") as fh:
            for r in step_records(30)[1:]:
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                time.sleep(0.01)
        (d / "summary.json").write_text(json.dumps({"status": "completed", "steps": 30, "total_steps": 30}))

    lines: list[str] = []
    thread = threading.Thread(target=writer)
    thread.start()
    snaps = follow(d, interval=0.05, emit=lines.append, timeout=60)
    thread.join()
    assert snaps and snaps[0].ended and snaps[0].status == "completed"
    assert any("completed" in line for line in lines) and len(lines) >= 2


def _cli(*args):
    from specc.cli import app, register_commands

    register_commands()
    return CliRunner().invoke(app, list(args))


def test_sweep_array_task_log(in_tmp):
    d = write_run(in_tmp / "runs", "e", "r16", config={"index": 3}, records=step_records(10))
    logs = in_tmp / "runs" / "e" / "logs"
    logs.mkdir()
    (logs / "e-999_2.out").write_text("other task\n")
    (logs / "e-999_3.out").write_text("slurmstepd: error: *** JOB 999 ON n1 CANCELLED AT 2025-01-01T00:00:00 ***\n")
    old = time.time() - 3600
    os.utime(d / "metrics.jsonl", (old, old))
    s = snapshot(d)
    assert s.log.name == "e-999_3.out"
    (flag,) = s.flags
    assert flag.kind == "killed" and "CANCELLED" in flag.message


def test_gpu_waiting_is_flagged_with_the_seeds_advice(in_tmp):
    """CUDA runs log NVML utilization (gpu_util) per step; a median under 70% is worth investigating."""
    runs = in_tmp / "runs"

    def with_util(util):
        return [dict(r, gpu_util=util(r["step"])) if "loss" in r else r for r in step_records(60)]

    idle = write_run(runs, "e", "idle", records=with_util(lambda i: 45.0 if i > 3 else 5.0))
    busy = write_run(runs, "e", "busy", records=with_util(lambda i: 96.0 if i > 3 else 5.0))
    cpu = write_run(runs, "e", "cpu", records=step_records(60))   # no gpu_util: nothing to judge
    s = snapshot(idle)
    assert kinds(s) == {"gpu_util"} and s.advice == INVESTIGATE and s.gpu_util == 45.0
    msg = s.flags[0].message
    assert "GPU utilization 45%" in msg and "data loading" in msg and "batch size" in msg
    assert not snapshot(busy).flags and snapshot(busy).gpu_util == 96.0
    assert not snapshot(cpu).flags and snapshot(cpu).gpu_util is None
    result = _cli("watch", str(idle), "--once")
    assert result.exit_code == EXIT_INVESTIGATE and "[INVESTIGATE] gpu_util" in result.output
    assert "GPU 45% busy" in result.output
