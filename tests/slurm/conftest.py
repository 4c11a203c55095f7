"""Session fixture for tests that need the local one-node SLURM cluster.

``slurm_cluster`` starts it with scripts/local-slurm (once per session), exports
SLURM_CONF so sbatch/squeue/scontrol find it, and stops it afterwards unless it
was already running when the session started.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.slurm.slurm_helpers import missing_binaries

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO / "scripts" / "local-slurm"


@dataclass(frozen=True)
class SlurmCluster:
    state_dir: Path
    conf: Path
    partitions: tuple[str, ...] = ("debug", "main")  # debug: Default, MaxTime 30 min
    default_partition: str = "debug"                  # main: MaxTime 3 days
    node: str = "localhost"


def _local_slurm(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL_SLURM), cmd], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = missing_binaries()
    if missing:
        reason = f"SLURM is not installed (missing {', '.join(missing)}); run scripts/install-slurm"
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip SLURM tests: {reason}", pytrace=False)
        pytest.skip(reason)

    state_dir = Path(os.environ.get("SPECC_SLURM_DIR", "/tmp/specc-slurm"))
    was_up = _local_slurm("status").returncode == 0
    up = _local_slurm("up")
    if up.returncode != 0:  # installed but broken: always a failure, never a skip
        pytest.fail(f"scripts/local-slurm up failed:\n{up.stdout}{up.stderr}", pytrace=False)

    conf = state_dir / "slurm.conf"
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield SlurmCluster(state_dir=state_dir, conf=conf)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if not was_up:
            _local_slurm("down")
