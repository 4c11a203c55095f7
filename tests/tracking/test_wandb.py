"""Weights & Biases in offline mode: the same content as MLflow, read back from the offline run's own files."""
from __future__ import annotations

import json

import pytest

from tests.test_cli import specc
from tests.tracking.test_mlflow import STATEMENT, jsonl_series, project
from tests.tracking.wandb_reader import offline_run

pytest.importorskip("transformers")
pytest.importorskip("wandb")


def test_an_offline_wandb_run_holds_every_step_once_across_a_resume_and_the_report(tmp_path):
    spec = project(tmp_path, "wandbed", "unused")
    spec.write_text(spec.read_text().replace('tracking: {mlflow: {uri: "unused", experiment: wandbed-mlflow}}',
                                             "tracking: {wandb: {project: specc-tests, mode: offline}}"))
    env = {"OMP_NUM_THREADS": "1", "WANDB_DISABLE_GIT": "true"}
    killed = specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env={**env, "SPECC_FAULT": "kill@step:7"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env=env)
    assert resumed.returncode == 0 and "warning: tracking" not in resumed.stderr, resumed.stderr[-2000:]
    run_dir = tmp_path / "runs/wandbed/main"
    state = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    assert state["logged_through"] == 12
    run = offline_run(run_dir / "wandb", state["id"])
    assert run["files"] == 2                                  # the killed process's and the resumed one's
    expected = jsonl_series(run_dir / "metrics.jsonl")
    assert set(run["history"]) == set(expected)
    for key, points in expected.items():
        assert run["history"][key] == points, key             # every step once, the same values
    assert run["config"]["training.lr"] == "0.01" and run["config"]["specc.hypothesis"] == STATEMENT
    assert any(STATEMENT in n for n in run["notes"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tracking"]["wandb"]["ok"] is True and summary["tracking"]["wandb"]["run_id"] == state["id"]

    report = specc("report", "wandbed", cwd=tmp_path, env=env)
    assert report.returncode == 0 and "to wandb" in report.stdout, report.stdout + report.stderr[-2000:]
    run = offline_run(run_dir / "wandb", state["id"])
    assert run["summary"]["specc.verdict.0"].startswith("CONFIRMED: best_val_loss < 100")
    assert ("report-main", "report") in run["artifacts"]
