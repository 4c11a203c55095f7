"""`specc plan`: model and data checks, dataset analysis, estimates with their sources, fit to the window."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from specc.cli import app
from specc.commands.common import calibrations_option
from specc.console import wide_stdout
from specc.errors import UserError
from specc.plan.experiments import plan_specs


@app.command()
def plan(
    spec: Path = typer.Argument(..., help="a spec file"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where prior runs are (estimate source 2)"),
    data: bool = typer.Option(True, "--data/--no-data", help="analyse the local model and data with the real tokenizer"),
    calibrations: Optional[Path] = calibrations_option(),
):
    """Check the model and data, estimate time and memory (every number with its source), fit the window."""
    from specc.lifecycle.plan_view import plan_lines
    from specc.lifecycle.planning import plan_report

    (loaded, p), = plan_specs([spec])
    report = plan_report(loaded, p, runs_dir=runs_dir, data=data, calibrations_dir=calibrations)
    out = wide_stdout()
    for line in plan_lines(report):
        out.print(line)
    if report.problems:   # a broken model or data file fails the plan, with the errors `specc run` would give
        n = len(report.problems)
        raise UserError(f"{n} problem{'s' if n != 1 else ''} with the model and data; `specc run` would stop on them "
                        "at start:\n" + "\n".join(report.problems))
