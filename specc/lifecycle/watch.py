"""`specc watch RUN|EXPERIMENT`: follow a run from its files alone (no server, no scheduler queries).

Reads runs/<exp>/<run>/metrics.jsonl (a line per step, evaluation and event, each with its unix time
"t": the heartbeat), config.json (total steps, time limit, window, estimate), summary.json and the
SLURM log in runs/<exp>/logs/ when there is one (the layout: specc/rundir.py).

summary.json says "running" from before a process' first step (with its pid, host and started_at)
until it ends, when the final summary replaces it. So a "running" summary is not an ended run: step,
loss and best come from metrics.jsonl (cut back to the resume point when a run resumes, so its lines
are current). Whether a run that has not ended is still alive: liveness.py. What is flagged, each with
the seeds' advice: watch_flags.py. The advice of a run is

    stop          any flag says stop (OOM, NaN, diverged, failed)
    investigate   any flag says investigate (killed or stalled, interrupted, plateau, rising loss, ...)
    continue      healthy, still running
    done          completed or early-stopped (no advice: nothing is left to do)

`specc watch --once` exits with EXIT_CODES[advice]: 0 continue or done, 1 stop, 3 investigate (the
worst over the runs shown).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from specc.errors import UserError
from specc.evaluate.stats import entry_metrics
from specc.fmt import fmt_duration
from specc.lifecycle.liveness import (
    current_attempt,
    heartbeat,
    process_alive,
    stale_after,
    step_lines,
)
from specc.lifecycle.watch_flags import (
    Snapshot,
    CONTINUE,
    DONE,
    INVESTIGATE,
    STOP,
    Flag,
    find_log,
    run_flags,
)
from specc.rundir import ENDED, RUNS_ROOT, RunDir, mtime
from specc.rundir import run_dirs as experiment_run_dirs

__all__ = ["CONTINUE", "DONE", "EXIT_CODES", "EXIT_INVESTIGATE", "EXIT_STOP", "INVESTIGATE", "STOP", "Flag", "Snapshot",
           "describe", "exit_code", "follow", "run_dirs", "snapshot", "watch_target"]

EXIT_STOP, EXIT_INVESTIGATE = 1, 3
EXIT_CODES = {CONTINUE: 0, DONE: 0, STOP: EXIT_STOP, INVESTIGATE: EXIT_INVESTIGATE}


def exit_code(snaps: list[Snapshot]) -> int:
    """1 if any run should be stopped, 3 if any needs investigating, else 0."""
    advice = {s.advice for s in snaps}
    return EXIT_STOP if STOP in advice else EXIT_INVESTIGATE if INVESTIGATE in advice else 0


def _time_limit_s(config: dict) -> float | None:
    from specc.spec.model import parse_time

    res = config.get("resources") or {}
    if not res.get("time"):
        return None
    try:
        return float(parse_time(res["time"]))
    except ValueError:
        return None


def snapshot(run_dir: Path, now: float | None = None) -> Snapshot:
    """What a run's files say right now, with flags and advice."""
    now = time.time() if now is None else now
    rd = RunDir(run_dir)
    config = rd.config() or {}
    summary = rd.summary()
    records = rd.records()
    attempt = current_attempt(summary, records, mtime(rd.config_path), mtime(rd.summary_path))
    ended = summary is not None and not attempt.running and summary.get("status") in ENDED
    final = summary if ended else None
    steps = step_lines(records)
    vals = [r for r in records if isinstance(r.get("val_loss"), (int, float))]
    total = (summary or {}).get("total_steps") or (config.get("training") or {}).get("total_steps")
    if final is not None:
        step, elapsed, status = final.get("steps") or 0, final.get("wall_s"), final["status"]
    else:
        step = max([attempt.start_step] + [r["step"] for r in step_lines(attempt.lines)])
        elapsed = (now - attempt.started_at) if attempt.started_at else None
        status = "running" if step_lines(attempt.lines) or any("val_loss" in r for r in attempt.lines) else "starting"
    beat = None if ended else heartbeat(attempt, mtime(rd.metrics_path))
    recent = steps[-20:]
    timed = [r for r in recent if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0]
    tps = (sum(r.get("tokens", 0) for r in timed) / sum(r["step_s"] for r in timed)) if timed else None
    losses = [r["loss"] for r in steps if isinstance(r.get("loss"), (int, float))]
    best = (final or {}).get("best_val_loss") or min((v["val_loss"] for v in vals), default=None)
    eta = None
    done_here = step - attempt.start_step
    if final is None and total and done_here > 0 and elapsed:
        eta = (total - step) * elapsed / done_here    # this attempt's pace, evaluations and checkpoints included
    snap = Snapshot(run_dir, f"{rd.experiment_dir.name}/{rd.name}", ended, status, int(step or 0), total, elapsed,
                    (now - beat) if beat else None, eta, _time_limit_s(config),
                    statistics.fmean(losses[-50:]) if losses else None, vals[-1]["val_loss"] if vals else None, best,
                    tps, steps[-1].get("mem_mb") if steps else None, log=find_log(run_dir, config.get("index")))
    util = [r["gpu_util"] for r in recent if isinstance(r.get("gpu_util"), (int, float))]
    snap.gpu_util = statistics.median(util) if util else None
    snap.task_scores = latest_task_scores(records, final)
    if not ended:
        snap.alive = process_alive(summary) if (summary or {}).get("status") == "running" else None
        snap.stale_after_s = stale_after(attempt, step_lines(attempt.lines) or steps)
    snap.flags = run_flags(snap, config, final, records, steps, summary)
    if snap.gone:
        snap.status, snap.eta_s = "killed", None
    elif any(f.kind == "killed" for f in snap.flags):
        snap.status, snap.eta_s = f"{snap.status}, no progress", None
    return snap


def latest_task_scores(records: list[dict], final: dict | None) -> dict:
    """The newest score of each task metric: summary.json's (after training) or the last in-training line."""
    scores: dict = {}
    for r in records:
        for key, value in r.items():
            if key.startswith("eval.") and isinstance(value, (int, float)):
                scores[key] = (r.get("step"), float(value))
    for task, entry in ((final or {}).get("eval") or {}).items():
        for metric, value in entry_metrics(entry).items():
            scores[f"eval.{task}.{metric}"] = (None, float(value))
    return scores


def describe(s: Snapshot) -> list[str]:
    """Plain lines for the terminal."""
    head = f"{s.name}: {s.status}"
    if s.total_steps:
        head += f", step {s.step}/{s.total_steps} ({100 * s.step / s.total_steps:.0f}%)"
    else:
        head += f", step {s.step}"
    bits = []
    if s.loss_avg is not None:
        bits.append(f"loss avg {s.loss_avg:.4f}")
    if s.val_loss is not None:
        bits.append(f"val {s.val_loss:.4f}" + (f" (best {s.best_val_loss:.4f})" if s.best_val_loss is not None else ""))
    for key, (step, score) in s.task_scores.items():
        bits.append(f"{key} {score:.3f}" + (f" (step {step})" if step is not None else ""))
    if s.tokens_per_s:
        bits.append(f"{s.tokens_per_s:,.0f} tok/s")
    if s.mem_mb:
        bits.append(f"mem {s.mem_mb:,.0f} MB")
    if s.gpu_util is not None:
        bits.append(f"GPU {s.gpu_util:.0f}% busy")
    lines = [head + (" | " + ", ".join(bits) if bits else "")]
    timing = []
    if s.elapsed_s is not None:
        timing.append(f"{'wall' if s.ended else 'elapsed'} {fmt_duration(s.elapsed_s)}")
    if s.eta_s is not None:
        timing.append(f"remaining ~{fmt_duration(s.eta_s)}")
    if s.limit_s and not s.ended:
        timing.append(f"time limit {fmt_duration(s.limit_s)}")
        if s.eta_s is not None and s.elapsed_s is not None:
            timing.append("on track" if s.elapsed_s + s.eta_s <= s.limit_s else "NOT on track")
    if s.heartbeat_age_s is not None and not s.ended:
        timing.append(f"last progress {fmt_duration(s.heartbeat_age_s)} ago")
    if timing:
        lines.append("  " + ", ".join(timing))
    if s.log:
        lines.append(f"  log: {s.log}")
    for f in s.flags:
        lines.append(f"  [{f.advice.upper()}] {f.kind}: {f.message}")
    if s.advice == DONE:
        lines.append(f"  advice: none, the run is done ({s.status})")
    else:
        lines.append(f"  advice: {s.advice}" + ("" if s.flags else " (nothing wrong seen)"))
    return lines


def watch_target(target: str, runs_dir: Path = RUNS_ROOT) -> Path:
    """The directory `specc watch TARGET` follows: a path, or a name under runs/ (<experiment>[/<run>])."""
    for cand in (Path(target), runs_dir / target):
        if cand.is_dir():
            return cand
    raise UserError(f"no run or experiment directory {target!r}",
                    hint=f"pass runs/<experiment>/<run>, runs/<experiment>, or a name under {runs_dir}/")


def run_dirs(target: Path) -> list[Path]:
    """A run directory, or every run directory of an experiment directory (test stages included)."""
    if RunDir(target).has_run_files():
        return [target]
    return [rd.path for rd in experiment_run_dirs(target, include_test=True)]


def follow(target: Path, *, interval: float = 30.0, emit=print, timeout: float | None = None,
           sleep=time.sleep) -> list[Snapshot]:
    """Print a snapshot whenever something changes; return once every run has ended (its final
    summary.json) or its process is known to be gone."""
    last: dict[Path, tuple] = {}
    start = time.time()
    while True:
        dirs = run_dirs(target) if target.is_dir() else []
        snaps = [snapshot(d) for d in dirs]
        for s in snaps:
            sig = (s.step, s.status, tuple(f.kind for f in s.flags), s.ended)
            if last.get(s.run_dir) != sig:
                last[s.run_dir] = sig
                for line in describe(s):
                    emit(line)
        if snaps and all(s.ended or s.gone for s in snaps):
            return snaps
        if timeout is not None and time.time() - start > timeout:
            return snaps
        sleep(interval)
