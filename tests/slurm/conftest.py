"""Session fixture for tests that need the local one-node SLURM cluster.

``slurm_cluster`` starts it with scripts/local-slurm (once per session), exports
SLURM_CONF so sbatch/squeue/scontrol find it, and stops it afterwards unless it
was already running when the session started.
"""
from __future__ import annotations

import os
import shutil
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
    partitions: tuple[str, ...] = ("debug", "main", "short")  # debug: Default, MaxTime 30 min
    default_partition: str = "debug"                           # main: MaxTime 3 days; short: 10 min
    node: str = "localhost"


def _local_slurm(cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL_SLURM), cmd], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, **(env or {})))


def _partitions(conf: Path) -> set[str]:
    proc = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, SLURM_CONF=str(conf)))
    return set(proc.stdout.split())


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
    missing_parts = set(SlurmCluster.partitions) - _partitions(conf)
    if missing_parts:   # started by an older scripts/local-slurm (another checkout's)
        pytest.fail(f"the cluster running in {state_dir} has no partition {', '.join(sorted(missing_parts))}: it was "
                    "started by an older scripts/local-slurm; run `scripts/local-slurm down`, or point "
                    "SPECC_SLURM_DIR and SPECC_SLURM_PORT at a cluster of your own", pytrace=False)
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


@dataclass(frozen=True)
class AccountingCluster:
    state_dir: Path
    conf: Path
    account: str = "specc-lab"     # created by scripts/local-slurm, with the submitting user in it

    @property
    def env(self) -> dict[str, str]:
        """What a client call needs to reach this cluster instead of the session's main one."""
        return {"SLURM_CONF": str(self.conf)}


@pytest.fixture(scope="session")
def slurm_accounting_cluster(slurm_cluster):
    """A second local cluster with accounting (slurmdbd + MariaDB: real sacct), on its own ports and state dir.

    Its clients need `env` (SLURM_CONF); the session's main cluster stays the default."""
    if shutil.which("slurmdbd", path=os.environ.get("PATH", "") + ":/usr/sbin") is None or \
            shutil.which("mariadbd", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        reason = "slurmdbd or MariaDB is not installed; run scripts/install-slurm"
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip SLURM tests: {reason}", pytrace=False)
        pytest.skip(reason)
    state_dir = Path(str(slurm_cluster.state_dir) + "-acct")
    env = {"SPECC_SLURM_DIR": str(state_dir), "SPECC_SLURM_ACCOUNTING": "1",
           "SPECC_SLURM_PORT": str(int(os.environ.get("SPECC_SLURM_PORT", "6817")) + 40)}
    was_up = _local_slurm("status", env).returncode == 0
    up = _local_slurm("up", env)
    if up.returncode != 0:
        pytest.fail(f"SPECC_SLURM_ACCOUNTING=1 scripts/local-slurm up failed:\n{up.stdout}{up.stderr}", pytrace=False)
    try:
        yield AccountingCluster(state_dir, state_dir / "slurm.conf")
    finally:
        if not was_up:
            _local_slurm("down", env)
