"""`specc calibrate --from-runs EXPERIMENT...`: fold the measured time accuracies of finished runs into
calibrations/<device key>.json (trains nothing).

Only runs that finished as planned count (completed or early-stopped, not extended: see
estimate.evidence.measurement_problem), with an estimate from a calibration or a declared figure. A
run's record replaces its earlier one; files are written only when a record was added or changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specc.errors import UserError
from specc.estimate.calibrations import open_calibration
from specc.fmt import rounded_floats
from specc.lifecycle.accuracy import accuracy_problem, calibration_record, time_accuracy
from specc.lifecycle.rundata import find_experiment_dir, load_experiment
from specc.rundir import RUNS_ROOT

CORRECTED_SOURCES = ("calibration", "declared")   # a prior's estimate is not a calibration's to correct


@dataclass
class AccuracyChange:
    run: str
    action: str                  # added | updated | unchanged | skipped
    reason: str = ""             # skipped: why
    path: Path | None = None     # the calibration file
    shape_key: str = ""
    old: float | None = None     # the time_accuracy recorded before
    new: float | None = None

    def detail(self) -> str:
        if self.action == "skipped":
            return self.reason
        was = f" (was {self.old:.3f})" if self.action == "updated" and self.old is not None else ""
        return f"time_accuracy {self.new:.3f}{was} in {self.path.as_posix()} for shape {self.shape_key}"


def _same_record(a: dict, b: dict) -> bool:
    keys = ("run", "source", "estimated_s", "actual_s", "time_accuracy")
    return rounded_floats({k: a.get(k) for k in keys}) == rounded_floats({k: b.get(k) for k in keys})


def _superseded(acc, cal) -> str | None:
    """A calibration estimate judged figures that a newer `specc calibrate` has replaced."""
    if acc.source != "calibration" or not acc.calibrated_at:
        return None
    entry = cal.entry(acc.shape_key) or {}
    now = (entry.get("measured") or {}).get("at")
    if now and now != acc.calibrated_at:
        return (f"its estimate used the calibration measured {acc.calibrated_at}, since replaced by the one "
                f"measured {now}")
    return None


def _fold_run(run, calibrations_dir, files: dict) -> AccuracyChange:
    name = f"{run.experiment}/{run.name}"
    problem = accuracy_problem(run)
    if problem:
        return AccuracyChange(name, "skipped", problem)
    acc = time_accuracy(run, calibrations_dir)
    if acc is None:
        return AccuracyChange(name, "skipped", "no estimate was recorded with it, and none can be made now")
    if acc.source not in CORRECTED_SOURCES:
        return AccuracyChange(name, "skipped", f"its estimate came from {acc.source!r} ({acc.source_text}); only "
                                               "calibration and declared estimates are corrected")
    if not acc.shape_key or not acc.device_key:
        return AccuracyChange(name, "skipped", "its recorded estimate names no run shape or device key")
    cal = files.setdefault(acc.device_key, open_calibration(acc.device_key, calibrations_dir))
    stale = _superseded(acc, cal)
    if stale:
        return AccuracyChange(name, "skipped", stale)
    record = calibration_record(run, acc)
    before = next((r for r in cal.accuracy.get(acc.shape_key, []) if r.get("run") == record["run"]), None)
    change = AccuracyChange(name, "added", path=cal.path, shape_key=acc.shape_key, new=record["time_accuracy"],
                            old=before.get("time_accuracy") if before else None)
    if before is not None and _same_record(before, record):
        change.action = "unchanged"
        return change
    if before is not None:
        change.action = "updated"
    cal.add_accuracy(acc.shape_key, record)
    return change


def calibrate_from_runs(experiments: list[str], *, runs_root: Path = RUNS_ROOT, directory=None,
                        include_test: bool = False) -> list[AccuracyChange]:
    """Fold the time accuracies of the experiments' runs into calibrations/<device key>.json (the rules:
    the module docstring); one AccuracyChange per training run."""
    if not experiments:
        raise UserError("--from-runs needs at least one experiment", hint="specc calibrate --from-runs EXPERIMENT ...")
    files: dict = {}
    changes: list[AccuracyChange] = []
    for exp in experiments:
        runs = load_experiment(find_experiment_dir(exp, runs_root), include_test)
        if not runs:
            raise UserError(f"experiment {exp!r} has no run under {runs_root}/", hint="run it first: `specc run SPEC`")
        changes += [_fold_run(run, directory, files) for run in runs if run.kind == "train"]
    changed = {c.path for c in changes if c.action in ("added", "updated")}
    for cal in files.values():
        if cal.path in changed:
            cal.save()
    return changes
