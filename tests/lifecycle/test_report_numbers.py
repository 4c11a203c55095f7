"""Issue 10, smaller items: the wall column says what it shows, plots mark resumes and extensions, and the
report says how much validation data a run was judged on."""
from __future__ import annotations

from specc.lifecycle.plots import loss_figure, plot_experiment, restart_markers
from specc.lifecycle.report import build_report
from specc.lifecycle.report_view import render_markdown
from specc.lifecycle.rundata import load_run
from tests.lifecycle.run_files import step_records, write_run

WALL = [{"metric": "wall_hours", "comparator": "<", "target": 0.05}]


def test_wall_column_is_a_duration_and_wall_hours_stays_in_hours(in_tmp):
    write_run(in_tmp / "runs", "e", "main", config={"hypothesis": {"statement": "s", "expected": WALL}},
              summary={"wall_s": 58.0}, records=step_records(100))
    md = render_markdown(build_report("e", plots=False, record_accuracy=False))
    header = next(line for line in md.splitlines() if line.startswith("| run | status"))
    assert "wall_hours" not in header and "| wall |" in header        # the column is not in hours …
    row = next(line for line in md.splitlines() if line.startswith("| `main` | completed"))
    assert "| 58 s |" in row                                           # … and says so
    verdict = next(line for line in md.splitlines() if line.startswith("| `main` | wall_hours"))
    assert "| 0.0161 h (58 s) |" in verdict                            # the expectation's metric is in hours


def resumed_and_extended_records():
    recs = [r for r in step_records(120) if r["step"] <= 120]
    out = []
    for r in recs:
        out.append(r)
        if r["step"] == 40 and "loss" in r:
            out.append({"step": 40, "event": "checkpoint", "path": "step_0000040", "seconds": 0.1})
    i = next(k for k, r in enumerate(out) if r["step"] == 41)
    out.insert(i, {"step": 40, "event": "resumed", "restart": 1, "total_steps": 100, "backend": "torch"})
    j = next(k for k, r in enumerate(out) if r["step"] == 101)
    out.insert(j, {"step": 100, "event": "extended", "restart": 2, "total_steps": 120, "backend": "torch"})
    return out


def test_loss_plot_marks_resume_and_extension(in_tmp):
    d = write_run(in_tmp / "runs", "e", "main", records=resumed_and_extended_records(),
                  summary={"steps": 120, "total_steps": 120})
    run = load_run(d)
    assert restart_markers(run.records) == [(40, "resumed"), (100, "extended")]
    _, (ax_t, _), markers = loss_figure([run], "e")
    assert markers == [("main", 40, "resumed"), ("main", 100, "extended")]
    vertical = sorted({line.get_xdata()[0] for line in ax_t.lines
                       if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2})
    assert vertical == [40, 100]
    labels = [t.get_text() for t in ax_t.get_legend().get_texts()]
    assert "resumed (from a checkpoint)" in labels and "extended (more steps)" in labels
    paths = plot_experiment([run], in_tmp / "plots", "e")
    assert {p.name for p in paths} >= {"loss.png", "lr.png"}


def test_report_says_what_the_validation_was_on(in_tmp):
    recs = [dict(r, val_examples=12) if "val_loss" in r else r for r in step_records(50)]
    write_run(in_tmp / "runs", "e", "with", summary={"best_val_loss": 1.0}, records=recs)
    write_run(in_tmp / "runs", "e", "tokens", summary={"best_val_loss": 1.0}, records=step_records(50))
    md = render_markdown(build_report("e", plots=False, record_accuracy=False))
    assert "validated on" in md.splitlines()[next(i for i, line in enumerate(md.splitlines())
                                                  if line.startswith("| run | status"))]
    assert "| 12 examples, 100 target tokens |" in md and "| 100 target tokens |" in md
    assert "(each evaluation: 12 examples, 100 target tokens)" in md
