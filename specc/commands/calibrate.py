"""`specc calibrate`: measure each run shape on this hardware and record it under calibrations/."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from backends import unknown_backend
from specc.cli import app
from specc.commands.common import calibrations_option
from specc.console import wide_stdout
from specc.errors import UserError
from specc.fmt import markup_safe
from specc.plan.experiments import plan_specs


@app.command()
def calibrate(
    targets: List[str] = typer.Argument(..., metavar="SPEC | --from-runs EXPERIMENT...",
                                        help="a spec file; with --from-runs, one or more experiments (runs/<name>)"),
    from_runs: bool = typer.Option(False, "--from-runs",
                                   help="no training: fold the time accuracies of these experiments' finished runs "
                                        "(estimated / actual wall time) into the calibration files"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="with --from-runs: where the runs are"),
    run_names: Optional[List[str]] = typer.Option(None, "--run", help="only these runs (default: one per distinct shape)"),
    steps: int = typer.Option(20, "--steps", min=5, help="optimizer steps to run per shape (at least)"),
    min_seconds: float = typer.Option(10.0, "--min-seconds", min=0,
                                      help="measure quick steps for at least this long (more steps, up to 1000)"),
    warmup: int = typer.Option(3, "--warmup", min=0, help="first steps left out of the throughput"),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch, mlx or a registered plugin (overrides the spec)"),
    key: Optional[str] = typer.Option(None, "--key", help="store under calibrations/KEY.json instead of the spec's device key"),
    calibrations: Optional[Path] = calibrations_option(),
):
    """Measure tokens/s, peak memory and fixed overheads of each distinct run shape on this hardware.

    With --from-runs EXPERIMENT..., measure nothing: fold the recorded time accuracies of those
    experiments' runs (what `specc report` shows) into calibrations/, the files `specc compile` reads.
    Interrupted, failed and extended runs are skipped, each with its reason."""
    from specc.lifecycle.calibrate import calibrate_plan
    from specc.lifecycle.calibrate_view import calibration_lines, fold_lines
    from specc.lifecycle.fold_accuracy import calibrate_from_runs

    out = wide_stdout()
    if from_runs:
        lines = fold_lines(calibrate_from_runs(targets, runs_root=runs_dir, directory=calibrations))
    else:
        if len(targets) != 1:
            raise UserError(f"specc calibrate takes one spec file, not {len(targets)} arguments",
                            hint="calibrate each spec separately, or pass --from-runs to fold runs' time accuracies")
        if backend is not None and unknown_backend(backend):
            raise UserError(f"--backend: {unknown_backend(backend)}")
        (loaded, p), = plan_specs([Path(targets[0])])
        path, results = calibrate_plan(p, steps=steps, warmup=warmup, backend=backend, key=key,
                                       directory=calibrations, only=run_names, min_seconds=min_seconds,
                                       log=lambda m: out.print(markup_safe(m)))
        lines = calibration_lines(path, results)
    for line in lines:
        out.print(line)
