"""`specc status` and `specc cancel`: the recorded jobs of an experiment, with SLURM's view and the run's own.

SLURM's view comes from `scontrol show job -o` (it keeps finished jobs for MinJobAge), else from
`sacct` where accounting is on; the run's own view from runs/<exp>/<run>[.test]/ (metrics.jsonl,
summary.json, gate.json). A full run that waits on a failed test stage forever (a cluster without
--kill-on-invalid-dep support) is cancelled here, and the reason is shown.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from specc.rundir import FINISHED, RUNS_ROOT, RunDir, is_step_line
from specc.slurm import client
from specc.slurm.gate import read_verdict
from specc.slurm.state import JobRecord, Jobs, load_jobs
from specc.slurm.usage import Usage, run_usage


@dataclass
class Row:
    run: str
    stage: str
    job_id: str
    partition: str
    state: str
    step: int | None
    total: int | None
    loss: float | None
    eta_s: float | None
    restarts: int | None
    note: str
    log: str | None = None
    usage: Usage | None = None      # used against asked (slurm/usage.py)


def run_dir(experiment: str, run: str, stage: str, root: Path = RUNS_ROOT) -> Path:
    return RunDir.of(experiment, run, stage, root).path


def progress(directory: Path) -> tuple[int | None, float | None, float | None]:
    """(last step, its loss, mean step_s of the last 20 steps) from metrics.jsonl."""
    step = loss = None
    times: deque[float] = deque(maxlen=20)
    for rec in filter(is_step_line, RunDir(directory).iter_records()):
        step, loss = rec.get("step"), rec.get("loss")
        if isinstance(rec.get("step_s"), (int, float)):
            times.append(rec["step_s"])
    return step, loss, (sum(times) / len(times) if times else None)


def total_steps(directory: Path, stage: str) -> int | None:
    rd = RunDir(directory)
    summary = rd.summary()
    if summary and summary.get("total_steps"):
        return summary["total_steps"]
    cfg = rd.config()
    if not cfg:
        return None
    if stage == "test":
        return ((cfg.get("stages") or {}).get("test") or {}).get("max_steps")
    return (cfg.get("training") or {}).get("total_steps")


def test_failure(experiment: str, run: str, jobs: Jobs, root: Path = RUNS_ROOT) -> str:
    """Why the test stage of RUN failed, in one line, from the gate, the test summary or SLURM."""
    d = run_dir(experiment, run, "test", root)
    verdict = read_verdict(d)
    if verdict and not verdict.get("ok"):
        return "gate refused: " + "; ".join(verdict.get("reasons") or ["no reason recorded"])
    summary = RunDir(d).summary()
    if summary and summary.get("status") not in FINISHED:
        return f"{summary.get('status')}: {summary.get('stop_reason', '')}".rstrip(": ")
    rec = jobs.latest(run, "test")
    if rec is not None:
        info = client.job_record(rec.job_id)
        if info:
            return f"test job {rec.job_id} {info.get('JobState')} (exit {info.get('ExitCode', '?')}); see {rec.log}"
        return f"test job {rec.job_id} failed; see {rec.log}"
    return "no test job recorded"


def rows(experiment: str, root: Path = RUNS_ROOT, *, cancel_blocked: bool = True) -> list[Row]:
    jobs = load_jobs(experiment, root)
    out = []
    for run, recs in jobs.runs.items():
        for stage in ("test", "full"):
            rec = jobs.latest(run, stage)
            if rec is not None:
                out.append(_row(experiment, run, rec, jobs, root, cancel_blocked))
    return out


def _row(experiment: str, run: str, rec: JobRecord, jobs: Jobs, root: Path, cancel_blocked: bool) -> Row:
    d = run_dir(experiment, run, rec.stage, root)
    info = client.job_record(rec.job_id) or {}
    summary = RunDir(d).summary()
    state = info.get("JobState") or (f"{summary['status'].upper()}?" if summary else "UNKNOWN")
    reason = info.get("Reason", "None")
    step, loss, step_s = progress(d)
    total = total_steps(d, rec.stage)
    restarts = int(info["Restarts"]) if info.get("Restarts", "").isdigit() else (summary or {}).get("restarts")
    eta = (total - step) * step_s if state == "RUNNING" and step is not None and total and step_s else None
    note = ""
    blocked = reason == "DependencyNeverSatisfied"
    if rec.stage == "full" and blocked:
        why = _blocked_reason(experiment, run, jobs, root)
        note = f"test stage failed: {why}"
        if state == "PENDING" and cancel_blocked:   # a cluster that ignores --kill-on-invalid-dep
            client.scancel([rec.job_id])
            note += " (pending forever: cancelled)"
    elif rec.stage == "full" and state == "FAILED" and (v := read_verdict(run_dir(experiment, run, "test", root))) \
            and not v.get("ok"):
        note = "test stage failed: gate refused: " + "; ".join(v.get("reasons") or [])
    elif summary and summary.get("status") not in (None, *FINISHED) and state not in ("RUNNING", "PENDING"):
        note = f"{summary['status']}: {summary.get('stop_reason', '')}"
    elif rec.stage == "test" and (v := read_verdict(d)) and not v.get("ok"):
        note = "gate refused: " + "; ".join(v.get("reasons") or [])
    elif state == "PENDING" and reason not in ("None", ""):
        note = {"Dependency": "waiting for the test stage", "BeginTime": "requeued; starts shortly"}.get(reason, reason)
    elif state in ("FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL"):
        note = f"exit {info.get('ExitCode', '?')}" + (f"; see {rec.log}" if rec.log else "")
    elif summary and state.startswith("COMPLETED"):
        best = summary.get("best_val_loss")
        note = summary.get("status", "") + (f", best val {best:.4f}" if isinstance(best, (int, float)) else "")
    usage = run_usage(experiment, run, rec.stage, jobs, root, info)
    return Row(run, rec.stage, rec.job_id, rec.partition, state, step, total, loss, eta, restarts, note, rec.log, usage)


def _blocked_reason(experiment: str, run: str, jobs: Jobs, root: Path) -> str:
    if jobs.latest(run, "test") is not None:
        return test_failure(experiment, run, jobs, root)
    # A control task of a sweep has no test of its own: aftercorr waits on the whole test array.
    for other in jobs.runs:
        if jobs.latest(other, "test") is not None:
            rec = jobs.latest(other, "test")
            info = client.job_record(rec.job_id) or {}
            if info.get("JobState") not in (None, "COMPLETED") or (read_verdict(run_dir(experiment, other, "test", root)) or {}).get("ok") is False:
                return f"run {other}: {test_failure(experiment, other, jobs, root)}"
    return "a test job of the sweep failed"


def cancel_targets(experiment: str, run: str | None, root: Path = RUNS_ROOT) -> list[tuple[str, JobRecord]]:
    """(run, record) of the latest test and full job of every run (or of RUN) that SLURM may still hold."""
    jobs = load_jobs(experiment, root)
    runs = [run] if run else list(jobs.runs)
    out = []
    for r in runs:
        for stage in ("test", "full"):
            rec = jobs.latest(r, stage)
            if rec is not None:
                out.append((r, rec))
    return out


def cancel(experiment: str, run: str | None, root: Path = RUNS_ROOT) -> list[str]:
    """scancel the recorded jobs that are not finished; returns the ids cancelled."""
    ids = []
    for _, rec in cancel_targets(experiment, run, root):
        info = client.job_record(rec.job_id)
        if info is not None and info.get("JobState") in client.TERMINAL:
            continue
        # A whole experiment's sweep: cancel the array once (pending tasks have no record of their own yet).
        jid = rec.array_job_id if (run is None and rec.array_job_id) else rec.job_id
        if jid not in ids:
            ids.append(jid)
    if ids:
        res = client.scancel(ids)
        if res.rc != 0:
            raise client.SlurmError(f"scancel {' '.join(ids)} failed: {res.stderr.strip()}")
    return ids




def all_ended(rows_: list[Row]) -> bool:
    """Every job has ended (`specc status --watch` stops then); a job SLURM no longer knows counts as ended."""
    return all(r.state in client.TERMINAL or r.state.endswith("?") or r.state == "UNKNOWN" for r in rows_)
