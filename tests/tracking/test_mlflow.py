"""MLflow tracking against a real `mlflow server` (127.0.0.1, SQLite backend), read back through MlflowClient.

A run killed mid-way and resumed from its checkpoint continues the same MLflow run with every step once, and
each metric's history equals metrics.jsonl; `specc report` adds the verdicts and report.md with the plots; a
tracker that is down warns once and the run trains on, saying so in summary.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import specc
from tests.tiny_llama import make_tiny_llama

pytest.importorskip("transformers")
mlflow = pytest.importorskip("mlflow")

STATEMENT = "a tiny adapter learns to repeat the last word"


def project(root: Path, experiment: str, uri: str) -> Path:
    make_tiny_llama(root / "model", tokenizer="words")
    line = json.dumps({"text": "w1 w2 w3 w4 w5 w6 w1 w2"})
    for split in ("train", "valid"):
        (root / f"{split}.jsonl").write_text((line + "\n") * 16)
    spec = root / f"{experiment}.yaml"
    spec.write_text(f"""experiment: {experiment}
hypothesis:
  statement: {STATEMENT}
  expected: [{{metric: best_val_loss, comparator: "<", target: 100.0}}]
model: {{path: model, size: tiny, quantization: none, lora: {{rank: 2, alpha: 4}}}}
data: {{train: train.jsonl, valid: valid.jsonl, format: text, max_length: 32}}
training: {{max_steps: 12, batch_size: 2, grad_accum: 1, lr: 0.01, eval_every: 4, eval_examples: 4,
           checkpoint_every: 4, schedule: {{kind: constant, warmup_steps: 0}}, early_stopping: {{enabled: false}}}}
resources: {{cluster: local, partition: debug, time: "00:20:00"}}
tracking: {{mlflow: {{uri: "{uri}", experiment: {experiment}-mlflow}}}}
""")
    return spec


def jsonl_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for rec in map(json.loads, path.read_text().splitlines()):
        if "event" in rec:
            continue
        for k, v in rec.items():
            if k not in ("step", "t") and isinstance(v, (int, float)) and not isinstance(v, bool):
                series.setdefault(k, []).append((rec["step"], float(v)))
    return series


def test_a_killed_and_resumed_run_logs_every_step_once_and_the_report_reaches_mlflow(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    spec = project(tmp_path, "tracked", mlflow_server)
    env = {"OMP_NUM_THREADS": "1"}
    killed = specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env={**env, "SPECC_FAULT": "kill@step:7"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = tmp_path / "runs/tracked/main"
    state = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=mlflow_server)
    # Only what the checkpoint at step 4 committed reached MLflow; steps 5-7 are trained again.
    assert [m.step for m in client.get_metric_history(state["run_id"], "loss")] == [1, 2, 3, 4]

    resumed = specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "warning: tracking" not in resumed.stderr
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == state["run_id"]
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "main"
    assert client.get_experiment(run.info.experiment_id).name == "tracked-mlflow"
    expected = jsonl_series(run_dir / "metrics.jsonl")
    assert {"loss", "lr", "grad_norm", "val_loss", "val_tokens"} <= set(expected)
    assert set(run.data.metrics) == set(expected)
    for key, points in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(state["run_id"], key))
        assert history == points, key                         # every step once, the same values
    assert [s for s, _ in expected["loss"]] == list(range(1, 13))
    params = run.data.params
    assert (params["training.lr"], params["training.max_steps"], params["model.lora.rank"]) == ("0.01", "12", "2")
    assert run.data.tags["specc.hypothesis"] == STATEMENT
    assert run.data.tags["specc.expected.0"] == "best_val_loss < 100"
    assert STATEMENT in run.data.tags["mlflow.note.content"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tracking"]["mlflow"]["ok"] is True and summary["tracking"]["mlflow"]["run_id"] == state["run_id"]

    report = specc("report", "tracked", cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "logged 1 verdict(s)" in report.stdout and "to mlflow" in report.stdout
    run = client.get_run(state["run_id"])
    assert run.data.tags["specc.verdict.0"].startswith("CONFIRMED: best_val_loss < 100")
    assert run.data.tags["specc.hypothesis.overall"] == "CONFIRMED"
    files = {a.path for a in client.list_artifacts(state["run_id"], "report")}
    assert "report/report.md" in files
    plots = {a.path for a in client.list_artifacts(state["run_id"], "report/plots")}
    assert plots and all(p.endswith(".png") for p in plots)
    local = client.download_artifacts(state["run_id"], "report/report.md", str(tmp_path / "down"))
    assert Path(local).read_text() == (tmp_path / "runs/tracked/report.md").read_text()


def test_a_tracker_that_is_down_warns_once_and_the_run_trains_on(tmp_path):
    from tests.tracking.conftest import free_port

    spec = project(tmp_path, "untracked", f"http://127.0.0.1:{free_port()}")   # nothing listens there
    r = specc("run", str(spec), "--backend", "torch", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("warning: tracking: mlflow failed") == 1, r.stderr[-3000:]
    summary = json.loads((tmp_path / "runs/untracked/main/summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", 12)
    assert summary["tracking"]["mlflow"]["ok"] is False and summary["tracking"]["mlflow"]["error"]
