"""Used against asked: per run, the time and GPU-hours its job asked for, what it used, and their ratio.

*Asked* is one job's time limit (scontrol's TimeLimit while SLURM remembers the job, else sacct's
Timelimit, else the compiled resources.time) × its GPUs. *Used* is what the run took in all: from
sacct where accounting is on (the elapsed time of every job recorded for the run and stage, requeues
included: `sacct -D`), else from the run's own clock (summary.json's wall_s, which adds up restarts and
resubmissions; while it runs, the time since it started). A ratio above 1 means one job's limit was not
enough: the run needed a requeue or a resubmission. `suggest_time` turns the measured figure into a
--time for next time.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from specc.rundir import RUNS_ROOT, RunDir
from specc.slurm import client
from specc.slurm.choose import parse_slurm_time
from specc.slurm.state import Jobs, load_jobs
from specc.spec.model import format_time, parse_time

SAFETY = 0.10          # the suggested --time: measured + 10% + 10 min, rounded up to 5 min
SLACK_S = 600


@dataclass(frozen=True)
class Usage:
    asked_s: int | None
    used_s: float | None
    gpus: int
    source: str                 # where used_s came from: "sacct" | "run clock" | ""
    finished: bool = False      # the run completed: used_s is its whole cost

    @property
    def ratio(self) -> float | None:
        return self.used_s / self.asked_s if self.used_s is not None and self.asked_s else None

    @property
    def asked_gpu_h(self) -> float | None:
        return self.gpus * self.asked_s / 3600 if self.asked_s is not None else None

    @property
    def used_gpu_h(self) -> float | None:
        return self.gpus * self.used_s / 3600 if self.used_s is not None else None

    def to_dict(self) -> dict:
        return {"asked_s": self.asked_s, "used_s": None if self.used_s is None else round(self.used_s, 1),
                "ratio": None if self.ratio is None else round(self.ratio, 4), "gpus": self.gpus,
                "asked_gpu_h": self.asked_gpu_h, "used_gpu_h": self.used_gpu_h, "source": self.source,
                "suggested_time": suggest_time(self)}


def suggest_time(u: Usage) -> str | None:
    """A --time for next time from a finished run's measured figure: + 10% + 10 min, rounded up to 5 min."""
    if not u.finished or u.used_s is None:
        return None
    return format_time(int(math.ceil((u.used_s * (1 + SAFETY) + SLACK_S) / 300) * 300))


def sacct_rows(job_ids: list[str]) -> list[dict] | None:
    """Every run of these jobs (requeues included, -D) from accounting; None where accounting is off."""
    if not job_ids or shutil.which("sacct") is None:
        return None
    res = client.run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(job_ids), "-o",
                      "JobID,State,ElapsedRaw,TimelimitRaw,AllocTRES"], check=False)
    if res.rc != 0:
        return None
    rows = []
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 5 and parts[0]:
            rows.append({"JobId": parts[0], "State": parts[1].split()[0] if parts[1] else "",
                         "elapsed_s": int(parts[2]) if parts[2].isdigit() else 0,
                         "limit_s": int(parts[3]) * 60 if parts[3].isdigit() else None, "tres": parts[4]})
    return rows


def run_usage(experiment: str, run: str, stage: str, jobs: Jobs | None = None, root: Path = RUNS_ROOT,
              info: dict | None = None) -> Usage:
    """Used against asked for one run and stage ("full" or "test"); `info`: its last job's scontrol record,
    when the caller has it already ({} for a job SLURM no longer knows)."""
    jobs = jobs or load_jobs(experiment, root)
    recs = [r for r in jobs.runs.get(run, []) if r.stage == stage]
    d = RunDir.of(experiment, run, "test" if stage == "test" else None, root)
    config, summary = d.config() or {}, d.summary() or {}
    res = config.get("resources") or {}
    gpus = int(res.get("gpus") or 0)
    if stage == "test":
        limit = ((config.get("stages") or {}).get("test") or {}).get("time")
    else:
        limit = res.get("time")
    asked = parse_time(limit) if isinstance(limit, str) else None
    if recs and info is None:
        info = client.job_record(recs[-1].job_id) or {}
    if info and info.get("TimeLimit"):
        asked = parse_slurm_time(info["TimeLimit"]) or asked
    finished = summary.get("status") in ("completed", "early_stopped")
    rows = sacct_rows([r.job_id for r in recs])
    if rows:
        mine = [r for r in rows if any(r["JobId"] == rec.job_id for rec in recs)]
        if mine:
            if asked is None:
                asked = mine[-1]["limit_s"]
            return Usage(asked, float(sum(r["elapsed_s"] for r in mine)), gpus, "sacct", finished)
    used = summary.get("wall_s") if isinstance(summary.get("wall_s"), (int, float)) else None
    if summary.get("status") == "running" and isinstance(summary.get("started_at"), (int, float)):
        used = time.time() - summary["started_at"]
    return Usage(asked, used, gpus, "run clock" if used is not None else "", finished)
