"""`specc compile`: write generated/<experiment>/ for each spec, or with --check fail when it is stale."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import typer
from rich.markup import escape

from specc.cli import app
from specc.console import stderr_console, stdout_console
from specc.errors import EXIT_FAILED, UserError


@app.command()
def compile(
    specs: List[Path] = typer.Argument(..., help="spec files"),
    out_dir: Path = typer.Option(Path("generated"), "--out", help="where artifacts go"),
    check_only: bool = typer.Option(False, "--check", help="write nothing; exit 1 with a diff when generated/ is stale"),
):
    """Compile specs into reviewable artifacts: plan.md, config.json, schedule.csv, sbatch scripts."""
    from specc.emit.writer import committed_step_counts, render_experiment, stale_diff, write_files
    from specc.plan.experiments import plan_specs

    rendered = [(loaded, plan, render_experiment(loaded, plan))
                for loaded, plan in plan_specs(specs, committed_step_counts(out_dir))]
    out, err = stdout_console(), stderr_console()
    stale = False
    for loaded, plan, files in rendered:
        root = out_dir / plan.experiment
        if check_only:
            diff = stale_diff(root, files)
            if diff:
                stale = True
                sys.stdout.write("".join(diff))
                err.print(f"[red]stale[/]: {escape(str(root))} does not match {escape(str(loaded.path))}; "
                          f"run `specc compile {escape(str(loaded.path))}`")
            else:
                out.print(f"[green]up to date[/] {escape(str(root))}")
            continue
        try:
            result = write_files(root, files)
        except OSError as exc:
            raise UserError(f"cannot write {root}: {exc}", hint="check that --out is a writable directory",
                            stage="emit") from None
        out.print(f"[green]compiled[/] {escape(str(loaded.path))} → {escape(str(root))}/ ({len(result.written)} written, "
                  f"{result.unchanged} unchanged, {len(result.removed)} removed; {len(plan.runs)} run(s))")
        for w in plan.warnings:
            out.print(f"  [yellow]warning[/]: {escape(w)}")
    if stale:
        raise typer.Exit(EXIT_FAILED)
