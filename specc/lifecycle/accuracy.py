"""Estimated against actual wall time (time_accuracy = estimated / actual, as the seeds report it).

Only runs that completed or early-stopped without an extension are compared (evidence.measurement_problem):
an interrupted, failed or extended run did not run what was estimated. `specc report` records the
comparisons in runs/<experiment>/time_accuracy.json; `specc calibrate --from-runs` folds them into
calibrations/ (calibration_record).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from specc.estimate.calibrations import load_calibration
from specc.estimate.evidence import measurement_problem
from specc.estimate.shape import device_key
from specc.estimate.sources import estimate_run
from specc.lifecycle.rundata import RunData

ACCURACY_FILE = "time_accuracy.json"


@dataclass
class Accuracy:
    source: str
    source_text: str
    estimated_s: float
    actual_s: float
    raw_estimated_s: float
    shape_key: str
    device_key: str
    when: str            # "made before the run" | "now (no estimate was recorded with the run)" (+ pro-rating)
    calibrated_at: str = ""

    @property
    def time_accuracy(self) -> float:
        return self.estimated_s / self.actual_s

    @property
    def raw_time_accuracy(self) -> float:
        """Before the correction the estimate applied: what corrects the next estimate."""
        return self.raw_estimated_s / self.actual_s


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def accuracy_problem(run: RunData) -> str | None:
    """Why this run's wall time cannot be compared with its estimate, or None."""
    if run.kind != "train":
        return f"a {run.kind} run"
    problem = measurement_problem(run.summary, run.config)
    if problem is None and not (run.summary or {}).get("wall_s"):
        problem = "summary.json has no wall_s"
    return problem


def _recorded_or_now(run: RunData, calibrations_dir) -> tuple[dict, str] | None:
    s = run.summary or {}
    est = s.get("estimate") or run.config.get("estimate") or {}
    if est.get("wall_s"):
        return est, "made before the run"
    try:
        cal = load_calibration(device_key(run.config["resources"]), calibrations_dir)
        e = estimate_run(run.config, calibration=cal)
    except (KeyError, TypeError, ValueError):
        return None
    if e.wall_s is None:
        return None
    return e.to_config(), "now (no estimate was recorded with the run)"


def time_accuracy(run: RunData, calibrations_dir=None) -> Accuracy | None:
    """Estimated / actual wall time of a run that ran as planned (accuracy_problem is None).

    When the run did another number of steps than estimated (early stopping), the estimate is pro-rated
    to the steps done, and `when` says so."""
    if accuracy_problem(run) is not None:
        return None
    found = _recorded_or_now(run, calibrations_dir)
    if found is None:
        return None
    est, when = found
    s = run.summary or {}
    share, planned, done = 1.0, est.get("steps"), s.get("steps")
    if planned and done and int(planned) != int(done):
        share = int(done) / int(planned)
        when += f"; pro-rated to the {int(done):,} of {int(planned):,} estimated steps it ran ({s.get('status')})"
    wall = float(est["wall_s"])
    return Accuracy(est["source"], est.get("source_text", ""), wall * share, float(s["wall_s"]),
                    float(est.get("raw_wall_s") or wall) * share, est.get("shape_key", ""), est.get("device_key", ""),
                    when, str(est.get("calibrated_at") or ""))


def calibration_record(run: RunData, acc: Accuracy) -> dict:
    """What `specc calibrate --from-runs` files under the calibration's accuracy records."""
    return {"run": f"{run.experiment}/{run.name}", "source": acc.source, "estimated_s": acc.raw_estimated_s,
            "actual_s": acc.actual_s, "time_accuracy": acc.raw_time_accuracy, "at": _now()}


def accuracy_document(experiment: str, reports: list) -> dict:
    """runs/<experiment>/time_accuracy.json: each compared run, and why the others were not compared."""
    compared, skipped = [], []
    for r in reports:
        run, acc = r.run, r.accuracy
        name = f"{run.experiment}/{run.name}"
        if acc is not None:
            compared.append({"run": name, "source": acc.source, "source_text": acc.source_text, "when": acc.when,
                             "shape_key": acc.shape_key, "device_key": acc.device_key, "estimated_s": acc.estimated_s,
                             "raw_estimated_s": acc.raw_estimated_s, "actual_s": acc.actual_s,
                             "time_accuracy": acc.time_accuracy, "raw_time_accuracy": acc.raw_time_accuracy,
                             **({"calibrated_at": acc.calibrated_at} if acc.calibrated_at else {})})
        elif run.kind == "train":
            skipped.append({"run": name, "reason": r.accuracy_note or "no estimate to compare"})
    return {"experiment": experiment, "written_by": "specc report", "at": _now(),
            "fold_into_calibrations": f"specc calibrate --from-runs {experiment}",
            "compared": compared, "not_compared": skipped}


def write_accuracy(exp_dir: Path, document: dict) -> Path:
    path = exp_dir / ACCURACY_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
