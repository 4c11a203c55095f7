"""Is a run's process alive? From its files: the pid and host in a "running" summary.json, and the
heartbeat, the unix time "t" of its newest metrics line.

A run that has not ended is presumed dead when

- its process is gone: summary.json names this host and `os.kill(pid, 0)` finds no such process (or a
  zombie, or a process younger than the run); or, when that cannot be checked (another host),
- no new metrics line for max(60 s, 20 × the recent median step, 2 × the longest pause seen between
  its lines: evaluations, checkpoints); before its first line, 10 minutes after it started (lines
  without "t", from an older engine: at least 5 minutes).
"""
from __future__ import annotations

import os
import socket
import statistics
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_MIN_S = 60.0       # no new metrics line for at least this long ...
HEARTBEAT_STEPS = 20         # ... and 20 recent step cycles ...
HEARTBEAT_GAP = 2.0          # ... and twice the longest pause seen between lines: presumed dead or stalled
STARTUP_S = 600.0            # no line yet in this attempt: the first evaluation and step get this long
UNTIMED_MIN_S = 300.0        # lines without "t" (an older engine): pauses cannot be measured, so wait longer


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


@dataclass
class Attempt:
    """The process now (or last) training: where it started and what it wrote since."""
    running: bool                # summary.json says running, or a new attempt began after it ended
    started_at: float | None     # unix time
    start_step: int
    lines: list[dict]            # metrics lines of this attempt (all of them when they carry no "t")


def current_attempt(summary: dict | None, records: list[dict], config_mtime: float | None,
                    summary_mtime: float | None) -> Attempt:
    """The attempt the files show: a \"running\" summary's, one setting up after an ended summary, or the last."""
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


def step_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if "loss" in r and "step" in r]


def line_times(lines: list[dict]) -> list[float]:
    return [float(r["t"]) for r in lines if isinstance(r.get("t"), (int, float))]


def heartbeat(attempt: Attempt, metrics_mtime: float | None) -> float | None:
    """Unix time of the newest sign of life: the last metrics line's "t", else the file's mtime."""
    if not attempt.lines:
        return attempt.started_at
    times = line_times(attempt.lines)
    return max(times) if times else metrics_mtime


def stale_after(attempt: Attempt, steps: list[dict]) -> float:
    """How long without a new line means dead or stalled (see the module docstring)."""
    if not attempt.lines:
        return STARTUP_S
    recent = steps[-50:]
    cycles = [r["step_s"] for r in recent if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0]
    times = line_times(recent)
    cycles += [b - a for a, b in zip(times, times[1:]) if b > a][-len(recent):]
    typical = statistics.median(cycles) if cycles else 0.0
    stamped = line_times(attempt.lines)
    marks = ([attempt.started_at] if attempt.started_at is not None and stamped else []) + stamped
    longest = max((b - a for a, b in zip(marks, marks[1:])), default=0.0)
    floor = HEARTBEAT_MIN_S if stamped else UNTIMED_MIN_S
    return max(floor, HEARTBEAT_STEPS * typical, HEARTBEAT_GAP * longest)
