"""Issue 10, item 5: `specc watch` tells a live run from a resumed one's old summary, a killed process, a
stalled one; "investigate" and "stop" exit non-zero; a finished run is done, never "continue"."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from typer.testing import CliRunner

from specc.lifecycle.watch import (
    CONTINUE,
    DONE,
    EXIT_INVESTIGATE,
    EXIT_STOP,
    INVESTIGATE,
    describe,
    follow,
    snapshot,
)
from tests.lifecycle.run_files import step_records, write_run


def cli(*args):
    from specc.cli import app, register_commands

    register_commands()
    return CliRunner().invoke(app, list(args))


def running_summary(d, *, pid, host=None, started_at, steps=0, total=200):
    (d / "summary.json").write_text(json.dumps({
        "status": "running", "stop_reason": None, "experiment": d.parent.name, "run": d.name, "kind": "train",
        "pid": pid, "host": host or socket.gethostname(), "started_at": started_at, "steps": steps,
        "total_steps": total, "restarts": 1 if steps else 0, "backend": "torch", "history": [], "estimate": {}}))


def timed(records, start, step_s=0.25):
    """Give metrics lines the engine's "t", one step every step_s seconds from `start`."""
    out = []
    for r in records:
        out.append({**r, "t": start + r["step"] * step_s})
    return out


def append(d, records):
    with open(d / "metrics.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)


def test_a_resumed_run_reads_its_metrics_not_the_old_summary(in_tmp):
    """The issue: a resumed run training at step ~70 showed "interrupted, step 33/200 … best 3.2618"."""
    now = time.time()
    d = write_run(in_tmp / "runs", "e", "main", config={"training": {"total_steps": 200}})
    old = [r for r in timed(step_records(33, val_every=11), now - 100) if r["step"] <= 33]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    # The first attempt's final summary, then the second attempt supersedes it before its first step.
    (d / "summary.json").write_text(json.dumps({"status": "interrupted", "steps": 33, "total_steps": 200,
                                                "best_val_loss": 3.2618, "wall_s": 20.0}))
    started = now            # this process plays the resumed one: it must be older than the attempt
    append(d, [{"step": 33, "event": "resumed", "restart": 1, "total_steps": 200, "backend": "torch", "t": started + 0.1}])
    running_summary(d, pid=os.getpid(), started_at=started, steps=33)
    append(d, [dict(r, t=started + 0.2 + 0.25 * (r["step"] - 33)) for r in step_records(70)[1:] if r["step"] > 33
               and "loss" in r])
    s = snapshot(d, now=started + 0.2 + 0.25 * 37 + 0.5)
    assert not s.ended and s.status == "running" and s.step == 70 and s.total_steps == 200
    assert s.best_val_loss != 3.2618 and s.alive is True and s.advice == CONTINUE, describe(s)
    assert s.eta_s is not None and s.eta_s < 60       # this attempt's pace: 37 steps in ~10 s


def test_a_sigkilled_process_is_reported_killed_and_exits_non_zero(in_tmp):
    d = write_run(in_tmp / "runs", "e", "main", config={"training": {"total_steps": 200}})
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = time.time()
        running_summary(d, pid=child.pid, started_at=started - 1, steps=0)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in timed(step_records(20), started - 1)
                                                 if r["step"] <= 4))
        alive = snapshot(d)
        assert alive.alive is True and "killed" not in {f.kind for f in alive.flags}
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    s = snapshot(d)        # seconds later: no heartbeat rule could tell yet, the pid does
    assert s.alive is False and s.status == "killed" and s.eta_s is None
    (flag,) = [f for f in s.flags if f.kind == "killed"]
    assert flag.advice == INVESTIGATE and str(child.pid) in flag.message and "resumes" in flag.message
    result = cli("watch", str(d), "--once")
    assert result.exit_code == EXIT_INVESTIGATE and "killed" in result.output and "on track" not in result.output
    lines: list[str] = []
    assert follow(d, interval=0.05, emit=lines.append, timeout=30)[0].gone      # following stops: nothing will change


def test_no_heartbeat_for_many_steps_means_stalled_even_from_another_host(in_tmp):
    """0.25 s steps: silence for 90 s is 360 steps; the old rule waited 300 s."""
    now = time.time()
    d = write_run(in_tmp / "runs", "e", "main", config={"training": {"total_steps": 200}})
    running_summary(d, pid=12345, host="another-node", started_at=now - 100, steps=0)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in timed(step_records(40), now - 100)))
    s = snapshot(d, now=now)                  # the last line's t is now - 90; the file's mtime is fresh
    assert s.alive is None and 60 <= s.stale_after_s < 90
    assert "killed" in {f.kind for f in s.flags} and s.advice == INVESTIGATE
    assert "no progress" in s.status
    # Recent lines: alive.
    append(d, [{"step": 41, "loss": 1.0, "step_s": 0.25, "tokens": 1000, "t": now - 1}])
    assert "killed" not in {f.kind for f in snapshot(d, now=now).flags}


def test_startup_gets_a_longer_allowance(in_tmp):
    now = time.time()
    d = write_run(in_tmp / "runs", "e", "main", config={"training": {"total_steps": 200}})
    running_summary(d, pid=12345, host="another-node", started_at=now - 120)
    s = snapshot(d, now=now)
    assert s.status == "starting" and not s.flags and s.advice == CONTINUE
    running_summary(d, pid=12345, host="another-node", started_at=now - 2000)
    s = snapshot(d, now=now)
    assert "killed" in {f.kind for f in s.flags} and "no first step" in s.flags[0].message


def test_a_finished_run_is_done_and_other_ends_exit_non_zero(in_tmp):
    runs = in_tmp / "runs"
    done = write_run(runs, "e", "done", records=step_records(100), summary={"wall_s": 30.0})
    s = snapshot(done)
    assert s.ended and s.advice == DONE and "continue" not in " ".join(describe(s))
    result = cli("watch", str(done), "--once")
    assert result.exit_code == 0 and "done" in result.output
    interrupted = write_run(runs, "e", "int", records=step_records(30),
                            summary={"status": "interrupted", "steps": 30, "stop_reason": "SIGUSR1 received"})
    s = snapshot(interrupted)
    assert s.advice == INVESTIGATE and "resumes" in s.flags[-1].message
    assert cli("watch", str(interrupted), "--once").exit_code == EXIT_INVESTIGATE
    failed = write_run(runs, "e", "failed", records=step_records(30), summary={"status": "failed", "stop_reason": "x"})
    assert cli("watch", str(failed), "--once").exit_code == EXIT_STOP
    # The worst advice of an experiment's runs decides the exit code.
    assert cli("watch", "e", "--once", "--runs-dir", str(runs)).exit_code == EXIT_STOP


def test_watch_help_documents_the_exit_codes(in_tmp):
    result = cli("watch", "--help")
    assert result.exit_code == 0, result.output          # the help renders (it raised a rich MarkupError before)
    out = " ".join(result.output.split())
    assert "1 stop" in out and "3 investigate" in out
