"""`specc watch`: follow a run from its files and advise continue / investigate / stop."""
from __future__ import annotations

from pathlib import Path

import typer

from specc.cli import EXIT_ABORTED, app
from specc.console import wide_stdout
from specc.fmt import markup_safe

WATCH_HELP = """Follow a run from its files: progress, time window, and flags (OOM, NaN, killed, plateau, slow, leak).

A run whose summary.json says "running" is alive while its process is (checked by pid on this host) and
its metrics.jsonl keeps growing; a dead or stalled one is flagged "killed".

Exit codes (with --once, and when following ends): 0 continue or done (completed / early-stopped),
1 stop (OOM, NaN, diverged, failed), 3 investigate (killed, stalled, interrupted, plateau, rising loss,
falling throughput, growing memory, behind its window); the worst over the runs shown."""


@app.command(help=WATCH_HELP)
def watch(
    target: str = typer.Argument(..., help="a run directory, an experiment directory, or a name under --runs-dir: <experiment> or <experiment>/<run>"),
    once: bool = typer.Option(False, "--once", help="print one snapshot and exit (0 ok, 1 stop, 3 investigate)"),
    interval: float = typer.Option(30.0, "--interval", min=0.05, help="seconds between looks"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
):
    from specc.lifecycle.watch import (
        describe,
        exit_code,
        follow,
        run_dirs,
        snapshot,
        watch_target,
    )

    out = wide_stdout()
    path = watch_target(target, runs_dir)
    if once:
        snaps = [snapshot(d) for d in run_dirs(path)]
        if not snaps:
            out.print(f"{markup_safe(path)}: no run has started yet (no config.json)")
        for s in snaps:
            for line in describe(s):
                out.print(markup_safe(line))
        raise typer.Exit(exit_code(snaps))
    try:
        snaps = follow(path, interval=interval, emit=lambda line: out.print(markup_safe(line)))
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_ABORTED)
    out.print(("all runs ended: " if all(s.ended for s in snaps) else "no run is left to follow: ")
              + ", ".join(f"{s.name} {s.status}" for s in snaps))
    raise typer.Exit(exit_code(snaps))
