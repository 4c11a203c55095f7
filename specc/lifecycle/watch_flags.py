"""What `specc watch` flags in a run, each with the seeds' advice:

    OOM (log text)                    stop          reduce batch size / enable gradient checkpointing, retest
    loss NaN/Inf, diverged, failed    stop          reduce LR, add gradient clipping, retest
    process gone (killed, stalled)    investigate   read the log; `specc run` resumes from the newest checkpoint
    interrupted                       investigate   `specc run` (or the requeued job) resumes it
    loss plateau                      investigate   loss stable but not decreasing: LR too low or a bug
    loss rising                       investigate   (stop if it keeps rising)
    throughput falling                investigate   data loading, a shared node
    GPU utilization under 70%         investigate   data loading or host work between steps; a larger batch
    memory growing                    investigate   a leak: a longer run will OOM
    behind its time window            investigate   it will not finish in the window (checkpoint + requeue)
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from specc.fmt import fmt_duration
from specc.lifecycle.liveness import HEARTBEAT_MIN_S
from specc.rundir import FINISHED, TEST_SUFFIX, RunDir


CONTINUE, INVESTIGATE, STOP, DONE = "continue", "investigate", "stop", "done"     # the advice
OOM_PATTERNS = re.compile(r"CUDA out of memory|OutOfMemoryError|out of memory|MemoryError|oom-kill|OOM Killed|"
                          r"Out Of Memory|memory cgroup out of memory", re.IGNORECASE)
KILLED_PATTERNS = re.compile(r"\bKilled\b|killed by signal|CANCELLED|DUE TO TIME LIMIT|Segmentation fault|"
                             r"Traceback \(most recent call last\)|NODE_FAIL", re.IGNORECASE)
GPU_UTIL_MIN = 70.0        # median NVML utilization (metrics.jsonl gpu_util) below this is flagged
GPU_UTIL_STEPS = 10        # over at least this many recent steps (the first 3 of a run are warm-up)
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
    task_scores: dict = field(default_factory=dict)   # eval.<task>.<metric> → (step, score): the latest in training
    alive: bool | None = None            # the process checked (this host): True / False; None: not checkable
    stale_after_s: float | None = None   # no heartbeat for this long: presumed dead
    gpu_util: float | None = None        # median NVML utilization of the recent steps (CUDA runs), percent

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


def find_log(run_dir: Path, index: int | None = None) -> Path | None:
    """The newest SLURM log of this run in runs/<exp>/logs/: <run>-<jobid>.out, <run>.test-<jobid>.out, or
    a sweep array task's <exp>[.test]-<jobid>_<index>.out (index: config.json's `index`)."""
    rd = RunDir(run_dir)
    logs = rd.logs_dir
    if not logs.is_dir():
        return None
    exp, test = rd.experiment_dir.name, rd.is_test_stage
    base = rd.name.removesuffix(TEST_SUFFIX)
    candidates = [p for p in logs.glob("*.out")
                  if p.name.startswith(f"{base}.test-" if test else f"{base}-")]
    if not candidates and index is not None:
        prefix = f"{exp}.test-" if test else f"{exp}-"
        candidates = [p for p in logs.glob(f"*_{index}.out") if p.name.startswith(prefix)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def log_tail(path: Path, limit: int = 200_000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def liveness_flags(s: Snapshot, summary: dict | None, log_text: str) -> list[Flag]:
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


def run_flags(s: Snapshot, config: dict, summary: dict | None, records: list[dict], steps: list[dict],
              current: dict | None = None) -> list[Flag]:
    """Every flag of a run, in order: the log and the loss, liveness, trends, the window, how it ended.
    `summary`: the final summary of an ended run (None while it runs); `current`: summary.json as read."""
    log_text = log_tail(s.log) if s.log else ""
    flags = _log_and_loss_flags(records, summary, log_text)
    if summary is None:
        flags += liveness_flags(s, current, log_text)
    flags += _trend_flags(s, config, summary, steps)
    flags += gpu_flags(steps)
    alive = not any(f.kind == "killed" for f in flags)
    if summary is None and alive and s.eta_s is not None and s.elapsed_s is not None:
        flags += _window_flags(s, config)
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


def _log_and_loss_flags(records: list[dict], summary: dict | None, log_text: str) -> list[Flag]:
    """Out of memory (the log), a non-finite loss (metrics.jsonl, a diverged summary, the log)."""
    flags = []
    if OOM_PATTERNS.search(log_text):
        line = next((ln.strip() for ln in log_text.splitlines() if OOM_PATTERNS.search(ln)), "")
        flags.append(Flag("oom", STOP, f"out of memory in the log ({line[:120]}): reduce the batch size (keep batch × "
                                       "accum with more accumulation) or enable gradient checkpointing, then retest"))
    nonfinite = [r for r in records if r.get("non_finite") or (("loss" in r) and r["loss"] is None)]
    if nonfinite or (summary or {}).get("status") == "diverged" or NAN_PATTERNS.search(log_text):
        where = f" at step {nonfinite[0].get('step')}" if nonfinite else ""
        flags.append(Flag("nan", STOP, f"loss is NaN/Inf{where}: reduce the learning rate, add gradient clipping "
                                       "(training.grad_clip), retest"))
    return flags


def _trend_flags(s: Snapshot, config: dict, summary: dict | None, steps: list[dict]) -> list[Flag]:
    """A rising or flat loss (after warm-up), falling throughput, growing memory."""
    flags = []
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
    return flags


def gpu_flags(steps: list[dict], recent: int = 50) -> list[Flag]:
    """A GPU that waits: the median NVML utilization of the recent steps (CUDA runs log gpu_util) under 70%."""
    util = [r["gpu_util"] for r in steps[3:] if isinstance(r.get("gpu_util"), (int, float))][-recent:]
    if len(util) < GPU_UTIL_STEPS:
        return []
    median = statistics.median(util)
    if median >= GPU_UTIL_MIN:
        return []
    return [Flag("gpu_util", INVESTIGATE, f"GPU utilization {median:.0f}% (median of the last {len(util)} steps, under "
                                          f"{GPU_UTIL_MIN:.0f}%): the GPU waits. Check data loading and host work "
                                          "between steps (tokenization, logging, checkpoints), then raise the batch "
                                          "size (keep batch × accum; `specc plan` sizes it for the memory)")]


def _window_flags(s: Snapshot, config: dict) -> list[Flag]:
    """A live run that will not finish in its window (or time limit) at its pace."""
    est = (config.get("estimate") or {})
    if est.get("window_hours"):   # the seeds' window, less the margin held back for the final checkpoint
        budget = (est["window_hours"] - (est.get("margin_hours") or 0.0)) * 3600
        what = "window − margin"
    else:
        budget, what = s.limit_s, "time limit"
    finish = s.elapsed_s + s.eta_s
    if budget and finish > budget:
        return [Flag("window", INVESTIGATE,
                     f"behind its window: {fmt_duration(s.elapsed_s)} elapsed + {fmt_duration(s.eta_s)} to go "
                     f"= {fmt_duration(finish)} > {fmt_duration(budget)} ({what}). It will checkpoint at the "
                     "time limit and must be resumed (requeue) — or cut steps")]
    return []
