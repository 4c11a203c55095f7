"""Experiment trackers (MLflow, Weights & Biases): what a run logs besides metrics.jsonl.

The engine talks to one `Tracker` (open_tracker), through MetricsLog: every metrics line goes to
`write`, and the tracker passes lines on to its sinks only once they are committed by a checkpoint (or
the run ends), so a run resumed from its checkpoint never logs a step twice; the sinks also skip steps
they already hold. `specc report` adds the verdicts, the estimate accuracy and report.md with the plots
(`log_report`). A tracker that fails never stops training: the first error is warned once, that
tracker is switched off for the rest of the process, and summary.json says so (`status()`).

The tracker's own run ids live in <run>/tracking.json, so a resumed run continues the same MLflow run
(and the same W&B run id).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from specc.notices import warn

STATE = "tracking.json"


def read_state(run_dir: Path) -> dict:
    try:
        value = json.loads((Path(run_dir) / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_state(run_dir: Path, state: dict) -> None:
    path = Path(run_dir) / STATE
    tmp = path.with_name(f".{STATE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Tracker:
    """The sinks a run logs to, each guarded: an error switches that sink off, with one warning."""

    def __init__(self, sinks: list, run_dir: Path):
        self.sinks = sinks
        self.run_dir = run_dir
        self.pending: list[dict] = []
        self.errors: dict[str, str] = {}

    def _call(self, sink, what: str, *args) -> None:
        if sink.name in self.errors:
            return
        try:
            getattr(sink, what)(*args)
        except Exception as exc:   # a tracker is never worth a training run
            text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            self.errors[sink.name] = text
            warn(f"tracking: {sink.name} failed ({text}); training goes on without it "
                 "(metrics.jsonl has everything; summary.json records this)")

    def open(self, config: dict, resumed: bool, resume_step: int | None = None) -> None:
        """Open every sink; a resumed run replays its committed lines (steps up to the checkpoint), of which
        each sink logs only the steps it does not hold yet (a tracker that was down, or lost lines)."""
        for sink in self.sinks:
            self._call(sink, "open", config, resumed)
        if resume_step is not None:
            from specc.rundir import iter_jsonl

            committed = [r for r in iter_jsonl(self.run_dir / "metrics.jsonl") if r.get("step", 0) <= resume_step]
            for sink in self.sinks:
                self._call(sink, "log", committed)

    def write(self, record: dict) -> None:
        self.pending.append(record)
        if record.get("event") == "checkpoint":   # everything up to here is committed: a resume keeps it
            self.flush()

    def flush(self) -> None:
        records, self.pending = self.pending, []
        if records:
            for sink in self.sinks:
                self._call(sink, "log", records)

    def close(self, status: str | None) -> None:
        """Log what is left (a finished run's last lines) and end the tracker's run with the run's status."""
        if status is not None:
            self.flush()
        for sink in self.sinks:
            self._call(sink, "close", status)

    def status(self) -> dict:
        """For summary.json: per tracker, ok or the error, and where the run is."""
        out = {}
        for sink in self.sinks:
            entry = {"ok": sink.name not in self.errors, **sink.where()}
            if sink.name in self.errors:
                entry["error"] = self.errors[sink.name]
            out[sink.name] = entry
        return out


def open_tracker(config: dict, run_dir: Path, *, resumed: bool, resume_step: int | None = None) -> Tracker | None:
    """The run's tracker, or None when the spec has no `tracking` section."""
    section = config.get("tracking") or {}
    sinks = []
    if section.get("mlflow"):
        from specc.tracking.mlflow_sink import MlflowSink
        sinks.append(MlflowSink(section["mlflow"], run_dir))
    if section.get("wandb"):
        from specc.tracking.wandb_sink import WandbSink
        sinks.append(WandbSink(section["wandb"], run_dir))
    if not sinks:
        return None
    tracker = Tracker(sinks, run_dir)
    tracker.open(config, resumed, resume_step if resumed else None)
    return tracker


def log_report(run_dir: Path, config: dict, tags: dict[str, str], metrics: dict[str, float],
               artifacts: list[Path]) -> list[str]:
    """`specc report`: verdicts (tags), estimate accuracy (metrics) and report.md and the plots (artifacts),
    to the trackers this run logged to; returns what it could not do (warnings, never an error)."""
    section = config.get("tracking") or {}
    problems = []
    if section.get("mlflow"):
        from specc.tracking.mlflow_sink import log_report as mlflow_report
        try:
            mlflow_report(section["mlflow"], run_dir, tags, metrics, artifacts)
        except Exception as exc:
            problems.append(f"mlflow: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    if section.get("wandb"):
        from specc.tracking.wandb_sink import log_report as wandb_report
        try:
            wandb_report(section["wandb"], run_dir, tags, metrics, artifacts)
        except Exception as exc:
            problems.append(f"wandb: {type(exc).__name__}: {exc}")
    return problems
