"""`specc watch`: follow a run from its files and advise continue / investigate / stop."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from specc.cli import app, fail
from specc.console import wide_stdout
from specc.errors import EXIT_FAILED, UserError

out = wide_stdout()

CAL_HELP = "calibrations directory (default: $SPECC_CALIBRATIONS, else ./calibrations)"


def _e(x) -> str:
    return escape(str(x))


def _watch_target(target: str, runs_dir: Path) -> Path:
    for cand in (Path(target), runs_dir / target):
        if cand.is_dir():
            return cand
    raise UserError(f"no run or experiment directory {target!r}",
                    hint=f"pass runs/<experiment>/<run>, runs/<experiment>, or a name under {runs_dir}/")


@app.command()
def watch(
    target: str = typer.Argument(..., help="a run directory, an experiment directory, or <experiment>[/<run>]"),
    once: bool = typer.Option(False, "--once", help="print one snapshot and exit"),
    interval: float = typer.Option(30.0, "--interval", min=0.05, help="seconds between looks"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
):
    """Follow a run from its files: progress, time window, and flags (OOM, NaN, killed, plateau, slow, leak)."""
    from specc.lifecycle.watch import STOP, describe, follow, run_dirs, snapshot

    try:
        path = _watch_target(target, runs_dir)
    except UserError as exc:
        fail(exc)
    if once:
        snaps = [snapshot(d) for d in run_dirs(path)]
        if not snaps:
            out.print(f"{_e(path)}: no run has started yet (no config.json)")
        for s in snaps:
            for line in describe(s):
                out.print(_e(line))
        raise typer.Exit(EXIT_FAILED if any(s.advice == STOP for s in snaps) else 0)
    try:
        snaps = follow(path, interval=interval, emit=lambda line: out.print(_e(line)))
    except KeyboardInterrupt:
        raise typer.Exit(130)
    out.print("all runs ended: " + ", ".join(f"{s.name} {s.status}" for s in snaps))
