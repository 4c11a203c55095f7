"""`specc watch RUN|EXPERIMENT`: follow a run from its files alone (no server, no scheduler queries).

Reads runs/<exp>/<run>/metrics.jsonl (flushed every step: its modification time is the heartbeat),
config.json (total steps, time limit, window, estimate), summary.json (the run has ended) and the
SLURM log in runs/<exp>/logs/ when there is one. Flags what the seeds' monitors look for, each with
the seeds' advice:

    OOM (log text)                    stop          reduce batch size / enable gradient checkpointing, retest
    loss NaN/Inf, diverged            stop          reduce LR, add gradient clipping, retest
    process gone (stale heartbeat,    investigate   read the log; `specc run` resumes from the newest checkpoint
      no summary; killed/cancelled)
    loss plateau                      investigate   loss stable but not decreasing: LR too low or a bug
    loss rising                       investigate   (stop if it keeps rising)
    throughput falling                investigate   data loading, a shared node
    memory growing                    investigate   a leak: a longer run will OOM
    behind its time window            investigate   it will not finish in the window (checkpoint + requeue)
    healthy                           continue
"""
from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from specc.lifecycle.estimate import fmt_duration
from specc.lifecycle.report import read_json, read_jsonl

CONTINUE, INVESTIGATE, STOP = "continue", "investigate", "stop"
STALE_MIN_S = 300.0          # no heartbeat for this long (or 20 step cycles) and no summary: presumed dead
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

    @property
    def advice(self) -> str:
        kinds = {f.advice for f in self.flags}
        return STOP if STOP in kinds else INVESTIGATE if INVESTIGATE in kinds else CONTINUE


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


def snapshot(run_dir: Path, now: float | None = None) -> Snapshot:
    """What a run's files say right now, with flags and advice."""
    from specc.spec.model import parse_time

    now = time.time() if now is None else now
    config = read_json(run_dir / "config.json") or {}
    summary = read_json(run_dir / "summary.json")
    records = read_jsonl(run_dir / "metrics.jsonl")
    steps = [r for r in records if "loss" in r and "step" in r]
    vals = [r for r in records if "val_loss" in r]
    total = (summary or {}).get("total_steps") or (config.get("training") or {}).get("total_steps")
    started = _mtime(run_dir / "config.json")
    beat = _mtime(run_dir / "metrics.jsonl")
    step = (summary or {}).get("steps") if summary else (steps[-1]["step"] if steps else 0)
    elapsed = (summary or {}).get("wall_s") if summary else ((now - started) if started else None)
    limit = None
    res = config.get("resources") or {}
    if res.get("time"):
        try:
            limit = float(parse_time(res["time"]))
        except ValueError:
            limit = None
    recent = steps[-20:]
    timed = [r for r in recent if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0]
    tps = (sum(r.get("tokens", 0) for r in timed) / sum(r["step_s"] for r in timed)) if timed else None
    mem = steps[-1].get("mem_mb") if steps else None
    losses = [r["loss"] for r in steps if isinstance(r.get("loss"), (int, float))]
    loss_avg = statistics.fmean(losses[-50:]) if losses else None
    eta = None
    if not summary and total and step and elapsed and started:
        # Rate over the whole run so far, evaluations and checkpoints included; recent steps when available.
        rate = elapsed / step
        eta = (total - step) * rate
    snap = Snapshot(run_dir, f"{run_dir.parent.name}/{run_dir.name}", summary is not None,
                    (summary or {}).get("status") or ("running" if steps or vals else "starting"),
                    int(step or 0), total, elapsed, (now - beat) if beat else None, eta, limit, loss_avg,
                    vals[-1].get("val_loss") if vals else None, (summary or {}).get("best_val_loss") or
                    (min((v["val_loss"] for v in vals if isinstance(v.get("val_loss"), (int, float))), default=None)),
                    tps, mem, log=find_log(run_dir, config.get("index")))
    snap.flags = _flags(snap, config, summary, records, steps, now)
    return snap


def _flags(s: Snapshot, config: dict, summary: dict | None, records: list[dict], steps: list[dict], now: float) -> list[Flag]:
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
        cycles = [r["step_s"] for r in steps[-50:] if isinstance(r.get("step_s"), (int, float))]
        typical = statistics.median(cycles) if cycles else 0.0
        threshold = max(STALE_MIN_S, 20 * typical)
        killed = KILLED_PATTERNS.search(log_text)
        if s.heartbeat_age_s is not None and s.heartbeat_age_s > threshold:
            why = f"; the log says: {killed.group(0)}" if killed else ""
            flags.append(Flag("killed", INVESTIGATE,
                              f"no progress for {fmt_duration(s.heartbeat_age_s)} and no summary.json: the process "
                              f"is probably gone{why}. Read the log; `specc run` (or requeue) resumes from the newest "
                              "checkpoint"))
        elif killed and s.heartbeat_age_s is not None and s.heartbeat_age_s > 60:
            flags.append(Flag("killed", INVESTIGATE, f"the log says {killed.group(0)!r} and progress stopped "
                                                     f"{fmt_duration(s.heartbeat_age_s)} ago"))
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
    if summary is None and s.eta_s is not None and s.elapsed_s is not None:
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
    if summary is not None and summary.get("status") in ("completed", "early_stopped") and not flags:
        return []
    if summary is not None and summary.get("status") == "failed":
        flags.append(Flag("failed", STOP, f"the run failed: {summary.get('stop_reason')}"))
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
        timing.append(f"elapsed {fmt_duration(s.elapsed_s)}")
    if s.eta_s is not None:
        timing.append(f"remaining ~{fmt_duration(s.eta_s)}")
    if s.limit_s:
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
    lines.append(f"  advice: {s.advice}" + ("" if s.flags else " (nothing wrong seen)"))
    return lines


def run_dirs(target: Path) -> list[Path]:
    """A run directory, or every run directory of an experiment directory."""
    if (target / "config.json").is_file() or (target / "metrics.jsonl").is_file():
        return [target]
    return sorted(d for d in target.iterdir() if d.is_dir() and (d / "config.json").is_file() and ".prev-" not in d.name)


def follow(target: Path, *, interval: float = 30.0, emit=print, timeout: float | None = None,
           sleep=time.sleep) -> list[Snapshot]:
    """Print a snapshot whenever something changes; return once every run has a summary.json."""
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
        if snaps and all(s.ended for s in snaps):
            return snaps
        if timeout is not None and time.time() - start > timeout:
            return snaps
        sleep(interval)
