"""`specc report`: judge the hypothesis, compare estimated and actual time, plot, write report.md."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from specc.cli import app
from specc.console import wide_stdout
from specc.errors import UserError

out = wide_stdout()

CAL_HELP = "calibrations directory (default: $SPECC_CALIBRATIONS, else ./calibrations)"


def _e(x) -> str:
    return escape(str(x))


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
    calibrations: Optional[Path] = typer.Option(None, "--calibrations", help=CAL_HELP),
):
    """Judge the hypothesis against the runs, compare estimated and actual time, plot, write report.md.

    Writes under runs/<experiment>/ only (report.md, plots/, time_accuracy.json). To correct later
    estimates with the measured times, fold them into calibrations/ with `specc calibrate --from-runs`."""
    from specc.lifecycle.report import COLUMNS, build_report, run_row, write_report
    from specc.lifecycle.verdict import CONFIRMED, REJECTED

    if write_back:
        raise UserError("`specc report --write-back` was removed: reporting no longer changes calibrations/ "
                       "(which `specc compile` reads)",
                       hint=f"fold the time accuracies into the calibration files explicitly: "
                            f"`specc calibrate --from-runs {experiment}`")
    rep = build_report(experiment, runs_root=runs_dir, baseline=baseline, plots=plots,
                       calibrations_dir=calibrations, include_test=include_test)
    colour = {CONFIRMED: "green", REJECTED: "red"}.get(rep.overall, "yellow")
    out.print(f"[bold]{_e(rep.experiment)}[/]: hypothesis [{colour}]{rep.overall}[/]"
              + (f" (baseline {_e(rep.baseline)})" if rep.baseline else ""))
    t = Table(title_justify="left")
    for c in ("run", *COLUMNS, "verdicts"):
        t.add_column(c)
    for r in rep.sorted_runs(sort, desc):
        t.add_row(*map(_e, run_row(r)))
    out.print(t)
    for r in rep.runs:
        for v in r.verdicts:
            c = {CONFIRMED: "green", REJECTED: "red"}.get(v.verdict, "yellow")
            out.print(f"  {_e(r.run.name)}: {_e(v.expectation)} → [{c}]{v.verdict}[/] ({_e(v.reason)})")
        if r.accuracy:
            out.print(f"  {_e(r.run.name)}: time_accuracy {r.accuracy.time_accuracy:.2f} "
                      f"(estimated {r.accuracy.estimated_s:,.0f} s, actual {r.accuracy.actual_s:,.0f} s, {r.accuracy.source})")
        elif r.accuracy_note and r.run.kind == "train" and r.run.summary:
            out.print(f"  {_e(r.run.name)}: time not compared with the estimate: {_e(r.accuracy_note)}")
    for i, s in enumerate(rep.next_steps, 1):
        out.print(f"  next {i}. {_e(s)}")
    path = write_report(rep, sort, desc)
    out.print(f"wrote {path}" + (f" and {len(rep.plots)} plot(s) in {rep.dir / 'plots'}" if rep.plots else ""))
    if rep.accuracy_file is not None and any(r.accuracy for r in rep.runs):
        out.print(f"recorded time accuracy in {rep.accuracy_file}; fold it into calibrations/ with "
                  f"`specc calibrate --from-runs {_e(rep.experiment)}`")
