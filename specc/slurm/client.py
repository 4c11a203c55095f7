"""Thin wrappers around the SLURM client commands (sbatch, scontrol, squeue, sinfo, scancel, sacct).

Every call has a timeout (a wedged controller must not hang `specc status`) and raises SlurmError
with the command's own message when it fails.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from specc.errors import UserError

TIMEOUT_S = 30
# States after which a job never changes again (unless someone requeues it).
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                      "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"})
# `scontrol show job -o`: Key=Value pairs split on whitespace before `Key=` (keys may hold ':' and '/',
# values may hold '=': TRES=cpu=1,mem=1G).
_FIELD_SPLIT = re.compile(r"\s+(?=[A-Za-z][\w:/]*=)")


class SlurmError(UserError):
    """A SLURM client command failed or is missing."""


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


def available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("squeue") is not None


def run(cmd: list[str], *, check: bool = True, timeout: float = TIMEOUT_S, env: dict | None = None) -> Result:
    if shutil.which(cmd[0]) is None:
        raise SlurmError(f"{cmd[0]} not found: SLURM's client commands are not installed here",
                         hint="run this on a cluster's login node (or start the local test cluster: scripts/local-slurm up)")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(cmd)} did not answer within {timeout:g} s",
                         hint="is slurmctld reachable? (SLURM_CONF, the controller's host and port)") from None
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise SlurmError(f"{cmd[0]} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return res


def parse_show_job(text: str) -> list[dict[str, str]]:
    """`scontrol show job -o` output → one dict per line (one per array task)."""
    jobs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("JobId="):
            jobs.append(dict(f.split("=", 1) for f in _FIELD_SPLIT.split(line) if "=" in f))
    return jobs


def show_job(job_id: str) -> list[dict[str, str]]:
    """Every record SLURM still holds for JOB_ID ("12" or "12_3"); [] if it is unknown or purged."""
    res = run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
    if res.rc != 0:
        return []
    return parse_show_job(res.stdout)


def sacct_state(job_id: str) -> dict[str, str] | None:
    """Accounting's view of a finished job, where accounting is on (None otherwise)."""
    if shutil.which("sacct") is None:
        return None
    res = run(["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State,ExitCode,Partition"], check=False)
    if res.rc != 0:
        return None
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 4 and parts[0] == str(job_id):
            return {"JobId": parts[0], "JobState": parts[1].split()[0], "ExitCode": parts[2], "Partition": parts[3],
                    "Source": "sacct"}
    return None


def job_record(job_id: str) -> dict[str, str] | None:
    """scontrol's record (squeue's view, with Restarts and Reason), else sacct's, else None."""
    recs = show_job(job_id)
    if recs:
        return recs[0]
    return sacct_state(job_id)


def sbatch(args: list[str], *, env: dict | None = None) -> str:
    """`sbatch --parsable ARGS` → the job id (an array's master id; no ';cluster' suffix)."""
    res = run(["sbatch", "--parsable", *args], env=env, check=False)
    if res.rc != 0:
        raise SlurmError(f"sbatch refused the job: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout.strip().splitlines()[-1].split(";")[0]


def scancel(job_ids: list[str]) -> Result:
    return run(["scancel", *job_ids], check=False)


SINFO_FIELDS = ("NodeHost", "PartitionName", "Available", "StateCompact", "CPUsState", "Memory", "AllocMem",
                "Gres", "GresUsed", "Time")


def sinfo_nodes(partitions: list[str]) -> str:
    """One line per (node, partition): `host|partition|avail|state|A/I/O/T|memMB|allocMB|gres|gresused|timelimit`."""
    fmt = ",".join(f"{f}:|" for f in SINFO_FIELDS[:-1]) + f",{SINFO_FIELDS[-1]}"
    return run(["sinfo", "-h", "-N", "-p", ",".join(partitions), "-O", fmt], timeout=15).stdout


def with_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(extra)
    return env
