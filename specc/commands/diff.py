"""`specc diff`: semantic diff of specs and their effect on time and GPU-hours."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from specc.cli import app


@app.command()
def diff(
    specs: Optional[List[Path]] = typer.Argument(None, help="OLD.yaml NEW.yaml, or with --git the specs to compare"),
    git: Optional[str] = typer.Option(None, "--git", help="compare the working tree's specs with this revision"),
    markdown: bool = typer.Option(False, "--markdown", help="Markdown (for a pull-request comment)"),
):
    """Semantic diff of specs: resolved fields changed, runs added/removed, effect on time and GPU-hours."""
    from specc.lifecycle.specdiff import diff_text

    sys.stdout.write(diff_text(specs, git, markdown))   # plain text as it is (Markdown for a pull request): no console markup
