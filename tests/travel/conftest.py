"""Fixtures for the travel tests (tests/travel/runs.py: the scenarios and how they run)."""
from __future__ import annotations

import pytest

from backends import available
from tests.travel.runs import HANDOVER, Scenario, quickstart, specc


@pytest.fixture(scope="session")
def both_backends():
    if not {"torch", "mlx"} <= set(available()):
        pytest.skip("needs both the torch and mlx backends")


@pytest.fixture(scope="session")
def scenarios(both_backends, tmp_path_factory) -> dict[str, Scenario]:
    """"torch", "mlx": uninterrupted; "torch>mlx", "mlx>torch": 50 steps on one, resumed to 100 on the other."""
    root = tmp_path_factory.mktemp("travel")
    out = {}
    for first, then in (("torch", None), ("mlx", None), ("torch", "mlx"), ("mlx", "torch")):
        name = first if then is None else f"{first}>{then}"
        cwd = root / name.replace(">", "-to-")
        spec = quickstart(cwd)
        logs = []
        r = specc("run", spec, "--backend", first, cwd=cwd, fault=f"term@step:{HANDOVER}" if then else None)
        logs.append(r.stderr)
        assert r.returncode == (75 if then else 0), r.stderr[-3000:]
        if then:
            r = specc("run", spec, "--backend", then, cwd=cwd)
            logs.append(r.stderr)
            assert r.returncode == 0, r.stderr[-3000:]
        out[name] = Scenario(first, then, cwd, logs)
    return out
