"""Helpers for the travel tests: the quickstart trained on torch and on MLX, uninterrupted and handed over.

Each scenario runs the real `specc` command in its own directory on a copy of specs/quickstart.yaml
cut to 100 steps (its checkpoint_every 50 makes the hand-over point). A hand-over is a run stopped by
SIGTERM after step 50 (SPECC_FAULT=term@step:50: it checkpoints and exits 75) and resumed with the
other `--backend`. MLX runs use one thread (OMP_NUM_THREADS=1), as the conformance suite does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS, HANDOVER = 100, 50


def quickstart(directory: Path, steps: int = STEPS, experiment: str = "quickstart", **replace: str) -> Path:
    """specs/quickstart.yaml cut to `steps`, written into `directory` (created)."""
    text = (REPO / "specs" / "quickstart.yaml").read_text()
    for old, new in {"max_steps: 200": f"max_steps: {steps}", "experiment: quickstart": f"experiment: {experiment}",
                     **replace}.items():
        assert old in text, old
        text = text.replace(old, new)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "qs.yaml").write_text(text)
    return directory / "qs.yaml"


def specc(*args, cwd: Path, fault: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m specc ARGS` in `cwd`, with this checkout first on the path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200", NO_COLOR="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("SPECC_FAULT", None)
    if fault:
        env["SPECC_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "specc", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@dataclass
class Scenario:
    first: str
    then: str | None                       # None: uninterrupted on `first`
    cwd: Path
    logs: list[str]

    @property
    def run_dir(self) -> Path:
        return self.cwd / "runs" / "quickstart" / "main"

    def metrics(self) -> list[dict]:
        return [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines()]

    def steps(self) -> dict[int, dict]:
        return {m["step"]: m for m in self.metrics() if "loss" in m and "event" not in m}

    def vals(self) -> dict[int, float]:
        return {m["step"]: m["val_loss"] for m in self.metrics() if "val_loss" in m}

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())


