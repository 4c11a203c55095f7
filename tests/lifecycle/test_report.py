"""`specc report`: verdicts against runs and baselines, estimated vs actual (folded in by calibrate --from-runs), plots, report.md."""
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

EXPECTED = [{"metric": "final_loss", "comparator": "within", "target": 1.0, "tolerance": 0.05, "relative": True,
             "vs_baseline": True},
            {"metric": "wall_hours", "comparator": "<=", "target": 0.5, "tolerance": 0.1, "vs_baseline": True},
            {"metric": "best_val_loss", "comparator": "<", "target": 1.0},
            {"metric": "missing_metric", "comparator": ">", "target": 0}]


def cli(*args):
    from specc.cli import app, register_commands

    register_commands()
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def experiment(in_tmp):
    runs = in_tmp / "runs"
    write_run(runs, "base", "main", summary={"final_loss": 0.45, "wall_s": 24 * 3600, "best_val_loss": 0.5},
              records=step_records(100))
    estimate = {"source": "calibration", "source_text": "calibration: test", "wall_s": 13 * 3600.0,
                "raw_wall_s": 13 * 3600.0, "device_key": "local-cpu"}
    cfg = {"hypothesis": {"statement": "bigger batch is faster", "expected": EXPECTED}, "baseline": "base",
           "estimate": estimate}
    d = write_run(runs, "bigger", "main", config=cfg, records=step_records(100),
                  summary={"final_loss": 0.46, "wall_s": 12 * 3600, "best_val_loss": 0.48, "tokens_per_s": 900.0,
                           "peak_mem_mb": 2048, "data": {"packing_efficiency": 0.4}})
    config = json.loads((d / "config.json").read_text())
    config["estimate"]["shape_key"] = shape_of_config(config).key
    (d / "config.json").write_text(json.dumps(config))
    return in_tmp


def test_verdicts_baseline_and_accuracy(experiment):
    rep = build_report("bigger", plots=False)
    verdicts = {v.metric: v for v in rep.runs[0].verdicts}
    assert verdicts["final_loss"].verdict == "CONFIRMED" and verdicts["final_loss"].baseline == 0.45
    assert verdicts["wall_hours"].verdict == "CONFIRMED" and verdicts["wall_hours"].value == pytest.approx(0.5)
    assert verdicts["best_val_loss"].verdict == "CONFIRMED"
    assert verdicts["missing_metric"].verdict == "INCONCLUSIVE"
    assert rep.overall == "INCONCLUSIVE" and rep.baseline == "base"
    acc = rep.runs[0].accuracy
    assert acc.time_accuracy == pytest.approx(13 / 12)
    # Reporting leaves calibrations/ alone (issue 10); `specc calibrate --from-runs` folds the ratio into the
    # calibration file, where the next estimate of this shape reads it.
    assert load_calibration("local-cpu") is None
    assert cli("calibrate", "--from-runs", "bigger").exit_code == 0
    cal = load_calibration("local-cpu")
    (record,) = next(iter(cal.accuracy.values()))
    assert record["run"] == "bigger/main" and record["time_accuracy"] == pytest.approx(13 / 12, rel=1e-4)
    md = render_markdown(rep)
    for section in ("## Outcome", "## Metrics", "## Hypothesis validation", "## Estimated vs actual",
                    "## Observations", "## Next steps"):
        assert section in md
    assert "padding" in md    # packing efficiency 40%: a bottleneck to fix first


def test_rejected_and_next_steps(in_tmp):
    runs = in_tmp / "runs"
    cfg = {"hypothesis": {"statement": "s", "expected": [{"metric": "best_val_loss", "comparator": "<", "target": 0.1}]}}
    write_run(runs, "e", "main", config=cfg, summary={"best_val_loss": 0.5, "final_loss": 0.4}, records=step_records(200))
    rep = build_report("e", plots=False, record_accuracy=False)
    assert rep.overall == "REJECTED"
    assert any(s.startswith("Change approach") for s in rep.next_steps)


def test_unfinished_run_is_inconclusive_and_fixed_first(in_tmp):
    cfg = {"hypothesis": {"statement": "s", "expected": [{"metric": "final_loss", "comparator": "<", "target": 1}]}}
    write_run(in_tmp / "runs", "e", "main", config=cfg, records=step_records(30))   # no summary.json
    rep = build_report("e", plots=False)
    assert rep.overall == "INCONCLUSIVE" and rep.next_steps[0].startswith("Fix first")


def test_sweep_table_sorts_by_any_metric(in_tmp):
    runs = in_tmp / "runs"
    for name, loss, tps in (("r4", 0.6, 100.0), ("r8", 0.4, 300.0), ("r16", 0.5, 200.0)):
        write_run(runs, "sweep", name, summary={"best_val_loss": loss, "tokens_per_s": tps}, records=step_records(50))
    write_run(runs, "sweep", "r32", records=step_records(10))     # still running: sorts last
    rep = build_report("sweep", plots=False)
    assert [r.run.name for r in rep.sorted_runs("best_val_loss")] == ["r8", "r16", "r4", "r32"]
    assert [r.run.name for r in rep.sorted_runs("tokens_per_s", descending=True)][:3] == ["r8", "r16", "r4"]
    result = cli("report", "sweep", "--sort", "best_val_loss", "--no-plots")
    assert result.exit_code == 0, result.output
    md = (runs / "sweep" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `r")]
    assert [r.split("`")[1] for r in rows[:4]] == ["r8", "r16", "r4", "r32"]
    assert "Best run by best_val_loss: `r8`" in md


def test_plots_are_written(experiment):
    rep = build_report("bigger", plots=True)
    names = sorted(p.name for p in rep.plots)
    assert names == ["loss.png", "lr.png", "throughput_memory.png"]
    for p in rep.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_report_cli(experiment):
    result = cli("report", "bigger", "--no-write-back")
    assert result.exit_code == 0, result.output
    assert "INCONCLUSIVE" in result.output and (experiment / "runs" / "bigger" / "report.md").is_file()
    assert "![loss](plots/loss.png)" in (experiment / "runs" / "bigger" / "report.md").read_text()
    result = cli("report", "nope")
    assert result.exit_code == 1 and "bigger" in result.output


def test_estimate_made_at_report_time_when_none_was_recorded(in_tmp):
    d = write_run(in_tmp / "runs", "e", "main", summary={"wall_s": 100.0}, records=step_records(100))
    config = json.loads((d / "config.json").read_text())
    write_calibration(in_tmp / "calibrations", "local-cpu", {shape_of_config(config).key: cal_entry(config)})
    rep = build_report("e", plots=False, record_accuracy=False)
    acc = rep.runs[0].accuracy
    assert acc is not None and acc.source == "calibration" and "now" in acc.when
