"""Small helpers for tests that talk to the local SLURM cluster (scripts/local-slurm).

The local cluster has no accounting (no slurmdbd, so no ``sacct``); job state comes
from ``scontrol show job -o`` instead, which keeps finished jobs for MinJobAge
(900 s on the local cluster) and then forgets them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")

# States after which a job never changes again (unless someone requeues it).
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
})

# `scontrol show job -o` prints `Key=Value` pairs separated by spaces; keys may hold
# ':' or '/' (AllocNode:Sid, CPUs/Task), values may hold '=' (TRES=cpu=1,mem=1G).
_FIELD_SPLIT = re.compile(r"\s+(?=[A-Za-z][\w:/]*=)")


def missing_binaries() -> list[str]:
    # The daemons live in /usr/sbin, which is not on a non-root Debian user's PATH.
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in SLURM_BINARIES if shutil.which(b, path=path) is None]


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a SLURM client command (SLURM_CONF comes from the environment)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def sbatch(*args: str, cwd: str | Path | None = None) -> str:
    """Submit with ``sbatch --parsable ARGS``; return the job id ("123", no cluster suffix)."""
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def parse_show_job(text: str) -> list[dict[str, str]]:
    """Parse ``scontrol show job -o`` output: one dict per line (per array task)."""
    jobs = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("JobId="):
            continue
        jobs.append(dict(f.split("=", 1) for f in _FIELD_SPLIT.split(line) if "=" in f))
    return jobs


def job_infos(job_id: str) -> list[dict[str, str]]:
    """All records for JOB_ID (an array's master id gives one per task); [] if unknown."""
    proc = run("scontrol", "show", "job", "-o", str(job_id), check=False)
    if proc.returncode != 0:  # "Invalid job id specified": never existed or purged
        return []
    return parse_show_job(proc.stdout)


def job_info(job_id: str) -> dict[str, str] | None:
    infos = job_infos(job_id)
    return infos[0] if infos else None


def job_state(job_id: str) -> str | None:
    """JobState of one job or array task ("123" or "123_4"), e.g. "RUNNING"; None if unknown."""
    info = job_info(job_id)
    return info["JobState"] if info else None


def wait_for_job_state(job_id: str, states: Iterable[str] | str, timeout: float = 60,
                       poll: float = 0.5) -> dict[str, str]:
    """Poll until the job's JobState is one of STATES; return its record.

    Raises TimeoutError (with the last record seen) after TIMEOUT seconds.
    """
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    info = None
    while True:
        info = job_info(job_id)
        if info and info.get("JobState") in wanted:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not in {sorted(wanted)} after {timeout}s; last: "
                               + (f"{info.get('JobState')} Reason={info.get('Reason')}"
                                  if info else "unknown to scontrol"))
        time.sleep(poll)


def wait_for_job_done(job_id: str, timeout: float = 60) -> dict[str, str]:
    return wait_for_job_state(job_id, TERMINAL_STATES, timeout=timeout)


def wait_for(predicate, timeout: float = 60, poll: float = 0.5, what: str = "condition"):
    """Poll PREDICATE until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def wait_for_text(path: str | Path, text: str, timeout: float = 60) -> str:
    """Wait until file PATH contains TEXT; return the file's content."""
    path = Path(path)

    def check():
        content = path.read_text() if path.exists() else ""
        return content if text in content else None

    return wait_for(check, timeout=timeout, what=f"{text!r} in {path}")


def cancel(*job_ids: str) -> None:
    """Best-effort scancel (for test cleanup)."""
    if job_ids:
        run("scancel", *map(str, job_ids), check=False)
