"""`specc submit SPEC --unfinished`: which runs to submit again, and why the others are left alone.

A run is resubmitted when its last state says it can go on from where it stopped: interrupted
(checkpointed on a signal, cancelled or preempted), timed out, failed on a node, or never started.
It resumes from its newest valid checkpoint (the job scripts run `specc run --resume auto`). Completed
and early-stopped runs are done; diverged runs and runs that failed on bad input would only fail again;
a run whose test stage failed has to be fixed first; a run whose job is still queued or running is
SLURM's. The run's own summary.json decides first, then SLURM's state of its last recorded job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from specc.rundir import FINISHED, RUNS_ROOT, RunDir
from specc.slurm import client
from specc.slurm.gate import read_verdict
from specc.slurm.state import Jobs

# SLURM states of an ended job that say nothing was wrong with the run itself.
TIMED_OUT = {"TIMEOUT": "timed out", "DEADLINE": "ran past its deadline"}
NODE_TROUBLE = {"NODE_FAIL": "failed on a node", "BOOT_FAIL": "its node failed to boot"}
STOPPED = {"PREEMPTED": "preempted", "CANCELLED": "cancelled"}


@dataclass(frozen=True)
class Verdict:
    run: str
    resubmit: bool
    why: str
    retest: bool = False          # its test stage has not passed: it runs again first
    busy: bool = False            # SLURM still holds its job


def newest_checkpoint(run_dir: Path) -> int | None:
    """The step of the newest committed checkpoint (its manifest was written last), by name."""
    steps = [int(m.group(1)) for d in (Path(run_dir) / "checkpoints").glob("step_*")
             if (m := re.fullmatch(r"step_(\d+)", d.name)) and (d / "manifest.json").is_file()]
    return max(steps) if steps else None


def classify(summary: dict | None, slurm_state: str | None, *, checkpoint: int | None) -> tuple[bool, str]:
    """(resubmit?, why) from a run's summary.json and the SLURM state of its last job (None: unknown)."""
    resume = f"; resumes from step {checkpoint}" if checkpoint else "; starts from the beginning (no checkpoint)"
    state = (slurm_state or "").split()[0] if slurm_state else None
    status = (summary or {}).get("status")
    steps = (summary or {}).get("steps")
    if status in FINISHED:
        return False, f"{status} ({steps} steps)" if steps is not None else status
    if status == "diverged":
        return False, f"diverged: {summary.get('stop_reason', '')}; it would diverge again (change the spec)"
    where = f" at step {steps}" if steps is not None else ""
    if state in NODE_TROUBLE:
        return True, f"{NODE_TROUBLE[state]}{where}{resume}"
    if status == "failed":
        return False, f"failed: {summary.get('stop_reason', '')}; fix that first (see its log)"
    if state in TIMED_OUT:
        return True, f"{TIMED_OUT[state]}{where}{resume}"
    if status == "interrupted":
        return True, f"interrupted{where} ({summary.get('stop_reason', '')}){resume}"
    if status == "running":   # the process ended without a summary: killed
        if state in STOPPED:
            return True, f"{STOPPED[state]}{where}{resume}"
        if state == "OUT_OF_MEMORY":
            return False, f"out of memory{where}: raise resources.mem (or lower the batch) first"
        return True, f"killed{where} without a summary (job {state or 'state unknown'}){resume}"
    if summary is None:
        return True, "never started" + (f" (job {state})" if state else "")
    return False, f"status {status!r}"


def verdicts(experiment: str, runs, jobs: Jobs, root: Path = RUNS_ROOT) -> list[Verdict]:
    """One Verdict per run of the plan (RunPlans, in order)."""
    out = []
    for run in runs:
        rec = jobs.latest(run.name, "full")
        info = client.job_record(rec.job_id) if rec else None
        state = info.get("JobState") if info else None
        if state is not None and state not in client.TERMINAL:
            out.append(Verdict(run.name, False, f"job {rec.job_id} is {state}", busy=True))
            continue
        test_rec = jobs.latest(run.name, "test")
        if test_rec is not None:
            test_info = client.job_record(test_rec.job_id)
            test_state = test_info.get("JobState") if test_info else None
            if test_state is not None and test_state not in client.TERMINAL:
                out.append(Verdict(run.name, False, f"its test job {test_rec.job_id} is {test_state}", busy=True))
                continue
        d = RunDir.of(experiment, run.name, None, root)
        ok, why = classify(d.summary(), state, checkpoint=newest_checkpoint(d.path))
        retest = False
        if ok and run.test_resources is not None:
            test_dir = RunDir.of(experiment, run.name, "test", root)
            verdict = read_verdict(test_dir.path)
            test_summary = test_dir.summary()
            if verdict and not verdict.get("ok"):
                ok, why = False, "its test stage failed: gate refused: " + "; ".join(verdict.get("reasons") or [])
            elif (test_summary or {}).get("status") == "diverged":
                ok, why = False, f"its test stage diverged: {test_summary.get('stop_reason', '')}"
            elif not (verdict and verdict.get("ok")):
                retest = True
                why += "; its test stage runs first"
        out.append(Verdict(run.name, ok, why, retest=retest))
    return out
