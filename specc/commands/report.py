"""`specc report`: judge the hypothesis, compare estimated and actual time, plot, write report.md."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from specc.cli import app
from specc.commands.common import calibrations_option
from specc.console import wide_stdout
from specc.errors import UserError


@app.command()
def report(
    experiment: str = typer.Argument(..., help="an experiment name (runs/<name>) or its directory"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="the baseline experiment (default: the spec's)"),
    sort: Optional[str] = typer.Option(None, "--sort", help="sort runs by a metric (best_val_loss, tokens_per_s, ...)"),
    desc: bool = typer.Option(False, "--desc", help="sort descending"),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
    write_back: Optional[bool] = typer.Option(None, "--write-back/--no-write-back", hidden=True,
                                              help="removed: use `specc calibrate --from-runs EXPERIMENT`"),
    include_test: bool = typer.Option(False, "--include-test", help="include <run>.test stage runs"),
    calibrations: Optional[Path] = calibrations_option(),
):
    """Judge the hypothesis against the runs, compare estimated and actual time, plot, write report.md.

    Writes under runs/<experiment>/ only (report.md, plots/, time_accuracy.json). To correct later
    estimates with the measured times, fold them into calibrations/ with `specc calibrate --from-runs`."""
    from specc.lifecycle.report import build_report, publish_to_trackers
    from specc.lifecycle.report_view import report_lines, write_report, written_lines

    if write_back:
        raise UserError("`specc report --write-back` was removed: reporting no longer changes calibrations/ "
                        "(which `specc compile` reads)",
                        hint=f"fold the time accuracies into the calibration files explicitly: "
                             f"`specc calibrate --from-runs {experiment}`")
    rep = build_report(experiment, runs_root=runs_dir, baseline=baseline, plots=plots,
                       calibrations_dir=calibrations, include_test=include_test)
    out = wide_stdout()
    for line in report_lines(rep, sort, desc):
        out.print(line)
    path = write_report(rep, sort, desc)
    for line in written_lines(rep, path):
        out.print(line)
    for line in publish_to_trackers(rep, path):
        out.print(line, markup=False)
