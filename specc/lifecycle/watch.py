"""`specc watch RUN|EXPERIMENT`: follow a run from its files alone (no server, no scheduler queries).

Reads runs/<exp>/<run>/metrics.jsonl (a line per step, evaluation and event, each with its unix time
"t": the heartbeat), config.json (total steps, time limit, window, estimate), summary.json and the
SLURM log in runs/<exp>/logs/ when there is one.

summary.json says "running" from before a process' first step (with its pid, host and started_at)
until it ends, when the final summary replaces it. So a "running" summary is not an ended run: step,
loss and best come from metrics.jsonl (cut back to the resume point when a run resumes, so its lines
are current). A run that is not ended is presumed dead when

- its process is gone: summary.json names this host and `os.kill(pid, 0)` finds no such process (or a
  zombie, or a process younger than the run); or, when that cannot be checked (another host),
- no new metrics line for max(60 s, 20 × the recent median step, 2 × the longest pause seen between
  its lines: evaluations, checkpoints); before its first line, 10 minutes after it started (lines
  without "t", from an older engine: at least 5 minutes).

Flags, each with the seeds' advice:

    OOM (log text)                    stop          reduce batch size / enable gradient checkpointing, retest
    loss NaN/Inf, diverged, failed    stop          reduce LR, add gradient clipping, retest
    process gone (killed, stalled)    investigate   read the log; `specc run` resumes from the newest checkpoint
    interrupted                       investigate   `specc run` (or the requeued job) resumes it
    loss plateau                      investigate   loss stable but not decreasing: LR too low or a bug
    loss rising                       investigate   (stop if it keeps rising)
    throughput falling                investigate   data loading, a shared node
    memory growing                    investigate   a leak: a longer run will OOM
    behind its time window            investigate   it will not finish in the window (checkpoint + requeue)
    healthy, still running            continue
    completed or early-stopped        done          (no advice: nothing is left to do)

`specc watch --once` exits with EXIT_CODES[advice]: 0 continue or done, 1 stop, 3 investigate (the
worst over the runs shown).
"""
from __future__ import annotations

import os
import re
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from specc.lifecycle.estimate import fmt_duration
from specc.lifecycle.report import read_json, read_jsonl

CONTINUE, INVESTIGATE, STOP, DONE = "continue", "investigate", "stop", "done"
EXIT_STOP, EXIT_INVESTIGATE = 1, 3
EXIT_CODES = {CONTINUE: 0, DONE: 0, STOP: EXIT_STOP, INVESTIGATE: EXIT_INVESTIGATE}
ENDED = ("completed", "early_stopped", "diverged", "interrupted", "failed")
FINISHED = ("completed", "early_stopped")
HEARTBEAT_MIN_S = 60.0       # no new metrics line for at least this long ...
HEARTBEAT_STEPS = 20         # ... and 20 recent step cycles ...
HEARTBEAT_GAP = 2.0          # ... and twice the longest pause seen between lines: presumed dead or stalled
STARTUP_S = 600.0            # no line yet in this attempt: the first evaluation and step get this long
UNTIMED_MIN_S = 300.0        # lines without "t" (an older engine): pauses cannot be measured, so wait longer
OOM_PATTERNS = re.compile(r"CUDA out of memory|OutOfMemoryError|out of memory|MemoryError|oom-kill|OOM Killed|"
                          r"Out Of Memory|memory cgroup out of memory", re.IGNORECASE)
KILLED_PATTERNS = re.compile(r"\bKilled\b|killed by signal|CANCELLED|DUE TO TIME LIMIT|Segmentation fault|"
                             r"Traceback \(most recent call last\)|NODE_FAIL", re.IGNORECASE)
NAN_PATTERNS = re.compile(r"loss (?:=|:|is) ?nan|loss (?:=|:|is) ?inf|non-finite", re.IGNORECASE)


@dataclass
class Flag:
    kind: str
    advice: str          # continue | investigate | stop
    message: str


@dataclass
class Snapshot:
    run_dir: Path
    name: str
    ended: bool
    status: str
    step: int
    total_steps: int | None
    elapsed_s: float | None
    heartbeat_age_s: float | None
    eta_s: float | None
    limit_s: float | None
    loss_avg: float | None
    val_loss: float | None
    best_val_loss: float | None
    tokens_per_s: float | None
    mem_mb: float | None
    flags: list[Flag] = field(default_factory=list)
    log: Path | None = None
    alive: bool | None = None            # the process checked (this host): True / False; None: not checkable
    stale_after_s: float | None = None   # no heartbeat for this long: presumed dead

    @property
    def advice(self) -> str:
        kinds = {f.advice for f in self.flags}
        if STOP in kinds:
            return STOP
        if INVESTIGATE in kinds:
            return INVESTIGATE
        return DONE if self.ended else CONTINUE

    @property
    def gone(self) -> bool:
        """Its process is known to be dead: it will not end by itself."""
        return not self.ended and self.alive is False


def exit_code(snaps: list[Snapshot]) -> int:
    """1 if any run should be stopped, 3 if any needs investigating, else 0."""
    advice = {s.advice for s in snaps}
    return EXIT_STOP if STOP in advice else EXIT_INVESTIGATE if INVESTIGATE in advice else 0


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def find_log(run_dir: Path, index: int | None = None) -> Path | None:
    """The newest SLURM log of this run in runs/<exp>/logs/: <run>-<jobid>.out, <run>.test-<jobid>.out, or
    a sweep array task's <exp>[.test]-<jobid>_<index>.out (index: config.json's `index`)."""
    logs = run_dir.parent / "logs"
    if not logs.is_dir():
        return None
    name, exp = run_dir.name, run_dir.parent.name
    test = name.endswith(".test")
    base = name.removesuffix(".test")
    candidates = [p for p in logs.glob("*.out")
                  if p.name.startswith(f"{base}.test-" if test else f"{base}-")]
    if not candidates and index is not None:
        prefix = f"{exp}.test-" if test else f"{exp}-"
        candidates = [p for p in logs.glob(f"*_{index}.out") if p.name.startswith(prefix)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def _tail(path: Path, limit: int = 200_000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


# --- is the process alive? -----------------------------------------------------------------------------

def _proc_start_time(pid: int) -> float | None:
    """Unix start time of a process (Linux /proc), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0] == "Z"
    except (OSError, ValueError, IndexError):
        return False


def process_alive(summary: dict | None) -> bool | None:
    """Is the process a "running" summary names alive? None when this host cannot tell (another host,
    no pid). A zombie, or a process that started after the run did (its pid reused), is not the run."""
    s = summary or {}
    pid = s.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or s.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True           # another user's process: it exists
    except OSError:
        return None
    if _zombie(pid):
        return False
    started, born = s.get("started_at"), _proc_start_time(pid)
    if isinstance(started, (int, float)) and born is not None and born > started + 2:
        return False
    return True


# --- reading a run's files -------------------------------------------------------------------------------

@dataclass
class Attempt:
    """The process now (or last) training: where it started and what it wrote since."""
    running: bool                # summary.json says running, or a new attempt began after it ended
    started_at: float | None     # unix time
    start_step: int
    lines: list[dict]            # metrics lines of this attempt (all of them when they carry no "t")


def _attempt(summary: dict | None, records: list[dict], config_mtime: float | None, summary_mtime: float | None) -> Attempt:
    status = (summary or {}).get("status")
    if summary is not None and status == "running":
        started = summary.get("started_at")
        started = float(started) if isinstance(started, (int, float)) else summary_mtime
        lines = [r for r in records if not isinstance(r.get("t"), (int, float)) or started is None or r["t"] >= started - 1]
        return Attempt(True, started, int(summary.get("steps") or 0), lines)
    if summary is not None and config_mtime and summary_mtime and config_mtime > summary_mtime + 1:
        # config.json is rewritten when a process starts: a new attempt is setting up (model load, data)
        # and has not yet replaced the old summary with its "running" one.
        return Attempt(True, config_mtime, int(summary.get("steps") or 0), [])
    return Attempt(summary is None, config_mtime, 0, records)


def _step_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if "loss" in r and "step" in r]


def _times(lines: list[dict]) -> list[float]:
    return [float(r["t"]) for r in lines if isinstance(r.get("t"), (int, float))]


def heartbeat(attempt: Attempt, metrics_mtime: float | None) -> float | None:
    """Unix time of the newest sign of life: the last metrics line's "t", else the file's mtime."""
    if not attempt.lines:
        return attempt.started_at
    times = _times(attempt.lines)
    return max(times) if times else metrics_mtime


def stale_after(attempt: Attempt, steps: list[dict]) -> float:
    """How long without a new line means dead or stalled (see the module docstring)."""
    if not attempt.lines:
        return STARTUP_S
    recent = steps[-50:]
    cycles = [r["step_s"] for r in recent if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0]
    times = _times(recent)
    cycles += [b - a for a, b in zip(times, times[1:]) if b > a][-len(recent):]
    typical = statistics.median(cycles) if cycles else 0.0
    stamped = _times(attempt.lines)
    marks = ([attempt.started_at] if attempt.started_at is not None and stamped else []) + stamped
    longest = max((b - a for a, b in zip(marks, marks[1:])), default=0.0)
    floor = HEARTBEAT_MIN_S if stamped else UNTIMED_MIN_S
    return max(floor, HEARTBEAT_STEPS * typical, HEARTBEAT_GAP * longest)


def _limit(config: dict) -> float | None:
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
    config = read_json(run_dir / "config.json") or {}
    summary = read_json(run_dir / "summary.json")
    records = read_jsonl(run_dir / "metrics.jsonl")
    attempt = _attempt(summary, records, _mtime(run_dir / "config.json"), _mtime(run_dir / "summary.json"))
    ended = summary is not None and not attempt.running and summary.get("status") in ENDED
    final = summary if ended else None
    steps = _step_lines(records)
    vals = [r for r in records if isinstance(r.get("val_loss"), (int, float))]
    total = (summary or {}).get("total_steps") or (config.get("training") or {}).get("total_steps")
    if final is not None:
        step, elapsed, status = final.get("steps") or 0, final.get("wall_s"), final["status"]
    else:
        step = max([attempt.start_step] + [r["step"] for r in _step_lines(attempt.lines)])
        elapsed = (now - attempt.started_at) if attempt.started_at else None
        status = "running" if _step_lines(attempt.lines) or any("val_loss" in r for r in attempt.lines) else "starting"
    beat = None if ended else heartbeat(attempt, _mtime(run_dir / "metrics.jsonl"))
    recent = steps[-20:]
    timed = [r for r in recent if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0]
    tps = (sum(r.get("tokens", 0) for r in timed) / sum(r["step_s"] for r in timed)) if timed else None
    losses = [r["loss"] for r in steps if isinstance(r.get("loss"), (int, float))]
    best = (final or {}).get("best_val_loss") or min((v["val_loss"] for v in vals), default=None)
    eta = None
    done_here = step - attempt.start_step
    if final is None and total and done_here > 0 and elapsed:
        eta = (total - step) * elapsed / done_here    # this attempt's pace, evaluations and checkpoints included
    snap = Snapshot(run_dir, f"{run_dir.parent.name}/{run_dir.name}", ended, status, int(step or 0), total, elapsed,
                    (now - beat) if beat else None, eta, _limit(config),
                    statistics.fmean(losses[-50:]) if losses else None, vals[-1]["val_loss"] if vals else None, best,
                    tps, steps[-1].get("mem_mb") if steps else None, log=find_log(run_dir, config.get("index")))
    if not ended:
        snap.alive = process_alive(summary) if (summary or {}).get("status") == "running" else None
        snap.stale_after_s = stale_after(attempt, _step_lines(attempt.lines) or steps)
    snap.flags = _flags(snap, config, final, records, steps, now, summary)
    if snap.gone:
        snap.status, snap.eta_s = "killed", None
    elif any(f.kind == "killed" for f in snap.flags):
        snap.status, snap.eta_s = f"{snap.status}, no progress", None
    return snap


def _liveness_flags(s: Snapshot, summary: dict | None, log_text: str) -> list[Flag]:
    killed = KILLED_PATTERNS.search(log_text)
    why = f"; the log says: {killed.group(0)}" if killed else ""
    resume = "Read the log; `specc run` (or requeue) resumes from the newest checkpoint"
    if s.alive is False:
        pid, host = (summary or {}).get("pid"), (summary or {}).get("host")
        return [Flag("killed", INVESTIGATE, f"its process (pid {pid} on {host}) is gone and summary.json still says "
                                            f"running: it was killed at step {s.step}{why}. {resume}")]
    age, limit = s.heartbeat_age_s, s.stale_after_s
    if age is not None and limit is not None and age > limit:
        what = "no progress" if s.status != "starting" else "no first step"
        return [Flag("killed", INVESTIGATE, f"{what} for {fmt_duration(age)} (more than {fmt_duration(limit)}) and no "
                                            f"final summary.json: the process is probably gone or stalled{why}. {resume}")]
    if killed and age is not None and age > HEARTBEAT_MIN_S:
        return [Flag("killed", INVESTIGATE, f"the log says {killed.group(0)!r} and progress stopped "
                                            f"{fmt_duration(age)} ago")]
    return []


def _flags(s: Snapshot, config: dict, summary: dict | None, records: list[dict], steps: list[dict], now: float,
           current: dict | None = None) -> list[Flag]:
    """`summary`: the final summary of an ended run (None while it runs); `current`: summary.json as read."""
    flags: list[Flag] = []
    log_text = _tail(s.log) if s.log else ""
    if OOM_PATTERNS.search(log_text):
        line = next((ln.strip() for ln in log_text.splitlines() if OOM_PATTERNS.search(ln)), "")
        flags.append(Flag("oom", STOP, f"out of memory in the log ({line[:120]}): reduce the batch size (keep batch × "
                                       "accum with more accumulation) or enable gradient checkpointing, then retest"))
    nonfinite = [r for r in records if r.get("non_finite") or (("loss" in r) and r["loss"] is None)]
    if nonfinite or (summary or {}).get("status") == "diverged" or NAN_PATTERNS.search(log_text):
        where = f" at step {nonfinite[0].get('step')}" if nonfinite else ""
        flags.append(Flag("nan", STOP, f"loss is NaN/Inf{where}: reduce the learning rate, add gradient clipping "
                                       "(training.grad_clip), retest"))
    if summary is None:
        flags += _liveness_flags(s, current, log_text)
    losses = [r["loss"] for r in steps if isinstance(r.get("loss"), (int, float))]
    if len(losses) >= 100:
        w = 50
        prev, last = statistics.fmean(losses[-2 * w:-w]), statistics.fmean(losses[-w:])
        rel = (last - prev) / prev if prev else 0.0
        warm = (config.get("training") or {}).get("schedule", {}) or {}
        if s.step > warm.get("warmup_steps", 0):
            if rel > 0.05:
                flags.append(Flag("loss_rising", INVESTIGATE, f"the 50-step loss average rose {100 * rel:.1f}% "
                                                              f"({prev:.4f} → {last:.4f}); stop if it keeps rising"))
            elif abs(rel) < 0.005 and not (summary or {}).get("status") == "completed":
                flags.append(Flag("plateau", INVESTIGATE, f"loss plateau: the 50-step average moved {100 * rel:+.2f}% "
                                                          f"({prev:.4f} → {last:.4f}): LR too low, or a bug; consider "
                                                          "stopping (early stopping may do it)"))
    timed = [r for r in steps if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0][3:]
    if len(timed) >= 20:
        n = max(5, len(timed) // 5)

        def rate(rs):
            return sum(r.get("tokens", 0) for r in rs) / sum(r["step_s"] for r in rs)

        first, last = rate(timed[:n]), rate(timed[-n:])
        if first and (last - first) / first < -0.25:
            flags.append(Flag("throughput", INVESTIGATE, f"throughput fell {100 * (1 - last / first):.0f}% "
                                                         f"({first:,.0f} → {last:,.0f} tokens/s): data loading, or "
                                                         "other jobs on the node"))
        mem = [r["mem_mb"] for r in timed if isinstance(r.get("mem_mb"), (int, float)) and r["mem_mb"] > 0]
        if len(mem) >= 20:
            m0, m1 = statistics.fmean(mem[:n]), statistics.fmean(mem[-n:])
            if m0 and (m1 - m0) / m0 > 0.5:
                flags.append(Flag("memory", INVESTIGATE, f"memory grew {100 * (m1 / m0 - 1):.0f}% ({m0:.0f} → "
                                                         f"{m1:.0f} MB): a leak will OOM a longer run"))
    alive = not any(f.kind == "killed" for f in flags)
    if summary is None and alive and s.eta_s is not None and s.elapsed_s is not None:
        est = (config.get("estimate") or {})
        if est.get("window_hours"):   # the seeds' window, less the margin held back for the final checkpoint
            budget = (est["window_hours"] - (est.get("margin_hours") or 0.0)) * 3600
            what = "window − margin"
        else:
            budget, what = s.limit_s, "time limit"
        finish = s.elapsed_s + s.eta_s
        if budget and finish > budget:
            flags.append(Flag("window", INVESTIGATE,
                              f"behind its window: {fmt_duration(s.elapsed_s)} elapsed + {fmt_duration(s.eta_s)} to go "
                              f"= {fmt_duration(finish)} > {fmt_duration(budget)} ({what}). It will checkpoint at the "
                              "time limit and must be resumed (requeue) — or cut steps"))
    status = (summary or {}).get("status")
    if status in FINISHED and not flags:
        return []
    if status == "failed":
        flags.append(Flag("failed", STOP, f"the run failed: {summary.get('stop_reason')}"))
    if status == "interrupted":
        flags.append(Flag("interrupted", INVESTIGATE, f"interrupted at step {s.step}/{s.total_steps} "
                                                      f"({summary.get('stop_reason') or 'no reason recorded'}): "
                                                      "`specc run` (or the requeued job) resumes it from its newest "
                                                      "checkpoint"))
    return flags


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
    if s.tokens_per_s:
        bits.append(f"{s.tokens_per_s:,.0f} tok/s")
    if s.mem_mb:
        bits.append(f"mem {s.mem_mb:,.0f} MB")
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


def run_dirs(target: Path) -> list[Path]:
    """A run directory, or every run directory of an experiment directory."""
    if (target / "config.json").is_file() or (target / "metrics.jsonl").is_file():
        return [target]
    return sorted(d for d in target.iterdir() if d.is_dir() and (d / "config.json").is_file() and ".prev-" not in d.name)


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
