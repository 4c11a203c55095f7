"""`specc plan` output: every run is accounted for."""
from __future__ import annotations

from tests.test_cli import REPO, specc


def test_the_fit_section_names_every_run_of_a_sweep(tmp_path):
    r = specc("plan", "specs/lora-rank-sweep.yaml", "--no-data", "--runs-dir", str(tmp_path / "runs"), cwd=REPO)
    assert r.returncode == 0, r.stderr
    fit = r.stdout.split("Fit to the window", 1)[1].split("sbatch --time", 1)[0]
    for size in ("1B", "3B"):
        for rank in (4, 8, 16, 32, 64, 128):
            assert f"{size}_rank{rank}" in fit, (size, rank, fit)   # runs of the same shape were dropped
