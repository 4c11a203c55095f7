"""`specc diff`: semantic diff of specs and their effect on time and GPU-hours."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from specc.cli import app
from specc.console import wide_stdout
from specc.errors import UserError

out = wide_stdout()

CAL_HELP = "calibrations directory (default: $SPECC_CALIBRATIONS, else ./calibrations)"


def _e(x) -> str:
    return escape(str(x))


@app.command()
def diff(
    specs: Optional[List[Path]] = typer.Argument(None, help="OLD.yaml NEW.yaml, or with --git the specs to compare"),
    git: Optional[str] = typer.Option(None, "--git", help="compare the working tree's specs with this revision"),
    markdown: bool = typer.Option(False, "--markdown", help="Markdown (for a pull-request comment)"),
):
    """Semantic diff of specs: resolved fields changed, runs added/removed, effect on time and GPU-hours."""
    from specc.lifecycle.specdiff import changed_specs, diff_files, diff_git, render

    if git:
        targets = list(specs or []) or changed_specs(git)
        diffs = [diff_git(git, s) for s in targets]
        if markdown:
            sys.stdout.write("## specc diff against " + git + "\n\n")
        if not diffs:
            sys.stdout.write(f"no spec changed since {git}\n")
    else:
        if not specs or len(specs) != 2:
            raise UserError("give two specs (OLD.yaml NEW.yaml), or --git REV [SPEC...]")
        diffs = [diff_files(specs[0], specs[1])]
    for d in diffs:
        sys.stdout.write(render(d, markdown) + ("\n" if markdown else ""))
