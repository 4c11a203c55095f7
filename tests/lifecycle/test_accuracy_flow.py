"""Issue 10, items 3 and 4: `specc report` writes under runs/ only; `specc calibrate --from-runs` is the
explicit step that folds time accuracies into calibrations/, and only runs that ran as estimated count
(never interrupted, failed or extended ones)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from specc.estimate.calibrations import load_calibration
from specc.estimate.shape import shape_of_config
from specc.lifecycle.report import build_report
from specc.lifecycle.report_view import render_markdown
from tests.lifecycle.run_files import (
    cal_entry,
    step_records,
    write_calibration,
    write_run,
)


def cli(*args):
    from specc.cli import app, register_commands

    register_commands()
    return CliRunner().invoke(app, list(args))


def snapshot_dir(d):
    return {p.relative_to(d).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


def estimated_run(runs, experiment, name, *, wall_s, summary, steps=100):
    """A run whose config.json carries a calibration estimate of `wall_s` for `steps` steps."""
    d = write_run(runs, experiment, name, records=step_records(20))
    config = json.loads((d / "config.json").read_text())
    config["estimate"] = {"source": "calibration", "source_text": "calibration: test", "wall_s": wall_s,
                          "raw_wall_s": wall_s, "steps": steps, "device_key": "local-cpu",
                          "shape_key": shape_of_config(config).key, "calibrated_at": "2025-01-01T00:00:00Z"}
    (d / "config.json").write_text(json.dumps(config))
    s = {"status": "completed", "experiment": experiment, "run": name, "kind": "train", "steps": steps,
         "total_steps": steps, "best_step": steps, "estimate": config["estimate"], **summary}
    (d / "summary.json").write_text(json.dumps(s))
    return d, config


@pytest.fixture
def calibrated(in_tmp):
    """An experiment of four runs of one shape, and its calibration file (already holding an older record)."""
    runs = in_tmp / "runs"
    _, config = estimated_run(runs, "exp", "ok", wall_s=90.0, summary={"wall_s": 100.0})
    history = [{"kind": "fresh", "step": 0, "total_steps": 200, "backend": "torch", "at": 1.0},
               {"kind": "extend", "step": 200, "total_steps": 300, "backend": "torch", "at": 2.0}]
    estimated_run(runs, "exp", "ext", wall_s=90.0, steps=200,
                  summary={"wall_s": 300.0, "steps": 300, "total_steps": 300, "history": history, "extended": True})
    estimated_run(runs, "exp", "int", wall_s=90.0, summary={"wall_s": 30.0, "status": "interrupted", "steps": 33})
    estimated_run(runs, "exp", "early", wall_s=90.0, summary={"wall_s": 50.0, "status": "early_stopped", "steps": 50})
    key = shape_of_config(config).key
    path = write_calibration(in_tmp / "calibrations", "local-cpu", {key: cal_entry(config)},
                             {key: [{"run": "older/main", "source": "calibration", "time_accuracy": 1.0}]})
    return in_tmp, path, key


def test_report_leaves_calibrations_alone_and_records_under_runs(calibrated):
    root = calibrated[0]
    before = snapshot_dir(root / "calibrations")
    result = cli("report", "exp", "--no-plots")
    assert result.exit_code == 0, result.output
    assert snapshot_dir(root / "calibrations") == before            # bytes and mtimes: nothing changed
    doc = json.loads((root / "runs" / "exp" / "time_accuracy.json").read_text())
    compared = {r["run"]: r for r in doc["compared"]}
    assert set(compared) == {"exp/ok", "exp/early"}
    assert compared["exp/ok"]["time_accuracy"] == pytest.approx(0.9)
    # Early-stopped at 50 of 100 steps: the estimate is pro-rated to the steps it ran, and says so.
    assert compared["exp/early"]["time_accuracy"] == pytest.approx(45 / 50)
    assert "pro-rated" in compared["exp/early"]["when"]
    skipped = {r["run"]: r["reason"] for r in doc["not_compared"]}
    assert "extended" in skipped["exp/ext"] and "interrupted" in skipped["exp/int"]
    assert "specc calibrate --from-runs exp" in result.output


def test_an_extended_run_is_not_compared_with_its_shorter_estimate(calibrated):
    rep = build_report("exp", plots=False, record_accuracy=False)
    by = {r.run.name: r for r in rep.runs}
    assert by["ext"].accuracy is None and "extended at step 200 to 300 steps" in by["ext"].accuracy_note
    assert by["int"].accuracy is None
    md = render_markdown(rep)
    assert "`ext`: not compared: it was extended" in md
    table = md.split("## Estimated vs actual")[1].split("##")[0]
    assert "| `ok` | calibration" in table and "| `ext` | calibration" not in table


def test_calibrate_from_runs_folds_only_eligible_runs_and_says_what_changed(calibrated):
    _, path, key = calibrated
    result = cli("calibrate", "--from-runs", "exp")
    assert result.exit_code == 0, result.output
    records = {r["run"]: r for r in load_calibration("local-cpu").accuracy[key]}
    assert set(records) == {"older/main", "exp/ok", "exp/early"}
    assert records["exp/ok"]["time_accuracy"] == pytest.approx(0.9)
    out = " ".join(result.output.split())
    assert "added exp/ok: time_accuracy 0.900" in out and "skipped exp/ext: it was extended" in out
    assert "skipped exp/int: it did not finish (status interrupted)" in out and "updated calibrations/local-cpu.json" in out
    # Again: nothing new, so the file is not rewritten.
    mtime = path.stat().st_mtime_ns
    result = cli("calibrate", "--from-runs", "exp")
    assert result.exit_code == 0 and "unchanged exp/ok" in " ".join(result.output.split())
    assert "no calibration file changed" in result.output and path.stat().st_mtime_ns == mtime


def test_a_superseded_calibration_is_not_corrected_by_old_runs(calibrated):
    _, path, key = calibrated
    data = json.loads(path.read_text())
    data["entries"][key]["measured"]["at"] = "2026-06-01T00:00:00Z"      # recalibrated since the runs
    path.write_text(json.dumps(data))
    result = cli("calibrate", "--from-runs", "exp")
    assert result.exit_code == 0, result.output
    assert "since replaced" in " ".join(result.output.split())
    assert {r["run"] for r in load_calibration("local-cpu").accuracy[key]} == {"older/main"}


def test_report_write_back_is_gone_and_says_where_it_went(calibrated):
    result = cli("report", "exp", "--write-back", "--no-plots")
    assert result.exit_code == 1
    assert "specc calibrate --from-runs exp" in " ".join(result.output.split())
    assert not (calibrated[0] / "runs" / "exp" / "report.md").exists()


def test_calibrate_from_runs_errors(in_tmp):
    result = cli("calibrate", "--from-runs", "nope")
    assert result.exit_code == 1 and "no runs for experiment 'nope'" in result.output
    result = cli("calibrate", "a.yaml", "b.yaml")
    assert result.exit_code == 1 and "--from-runs" in result.output

