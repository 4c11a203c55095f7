"""MLflow: the run's params, hypothesis, metrics by step and end status, through MlflowClient (no global state).

One MLflow run per specc run, its id in <run>/tracking.json: a resumed run continues it, and steps the
MLflow run already holds are not logged again. Needs the `tracking` extra (pip install 'specc[tracking]').
"""
from __future__ import annotations

import os
from pathlib import Path

from specc.tracking import read_state, write_state
from specc.tracking.params import description, flat_params, hypothesis_tags, metric_points

END_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
              "interrupted": "KILLED", None: "KILLED"}
BATCH = 1000          # MLflow's limit of metrics in one log_batch (params: 100)


def client_for(uri: str):
    # A tracker that is down must cost seconds, not MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RuntimeError("the mlflow package is not installed (pip install 'specc[tracking]')") from None
    return MlflowClient(tracking_uri=uri)


class MlflowSink:
    name = "mlflow"

    def __init__(self, section: dict, run_dir: Path):
        self.uri = section["uri"]
        self.experiment = section.get("experiment")
        self.run_dir = Path(run_dir)
        self.client = None
        self.run_id: str | None = None
        self.last: dict[str, int] = {}      # key → the last step MLflow holds
        self.logged = 0

    def open(self, config: dict, resumed: bool) -> None:
        from mlflow.entities import Param, RunTag

        self.experiment = self.experiment or config["experiment"]
        client = self.client = client_for(self.uri)
        state = read_state(self.run_dir).get("mlflow") or {}
        if state.get("run_id") and state.get("uri") == self.uri:
            run = client.get_run(state["run_id"])
            self.run_id = run.info.run_id
            client.update_run(self.run_id, status="RUNNING")
            for key in run.data.metrics:
                history = client.get_metric_history(self.run_id, key)
                self.last[key] = max((m.step for m in history), default=-1)
            return
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
        tags = {**hypothesis_tags(config), "mlflow.note.content": description(config)}
        run = client.create_run(exp_id, run_name=str(config.get("run")), tags=tags)
        self.run_id = run.info.run_id
        write_state(self.run_dir, {**read_state(self.run_dir), "mlflow": {
            "uri": self.uri, "experiment": self.experiment, "experiment_id": exp_id, "run_id": self.run_id}})
        params = [Param(k, v) for k, v in flat_params(config).items()]
        for i in range(0, len(params), 100):
            client.log_batch(self.run_id, params=params[i:i + 100])
        client.log_batch(self.run_id, tags=[RunTag("specc.output_dir", str(config.get("output_dir")))])

    def log(self, records: list[dict]) -> None:
        from mlflow.entities import Metric

        metrics = []
        for record in records:
            for key, value, ms, step in metric_points(record):
                if step > self.last.get(key, -1):   # a step MLflow holds already is not logged twice
                    metrics.append(Metric(key, value, ms, step))
                    self.last[key] = step
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])
        self.logged += len(metrics)

    def close(self, status: str | None) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, END_STATUS.get(status, "FAILED"))

    def where(self) -> dict:
        return {"uri": self.uri, "experiment": self.experiment, "run_id": self.run_id, "metrics_logged": self.logged}


def log_report(section: dict, run_dir: Path, tags: dict[str, str], metrics: dict[str, float],
               artifacts: list[Path]) -> None:
    """Verdicts, estimate accuracy and the report's files, on the MLflow run this specc run logged to."""
    from mlflow.entities import Metric, RunTag

    state = read_state(run_dir).get("mlflow") or {}
    if not state.get("run_id"):
        raise RuntimeError(f"{run_dir} has no MLflow run recorded (tracking.json): it never reached the server")
    client = client_for(state.get("uri") or section["uri"])
    run_id = state["run_id"]
    import time
    now = int(time.time() * 1000)
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path="report" if path.suffix == ".md" else "report/plots")
