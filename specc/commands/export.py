"""`specc export`: a run's best or final adapter as PEFT, mlx-lm, or merged into its base model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from backends import unknown_backend
from specc.cli import app
from specc.console import stderr_console
from specc.errors import UserError


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory, runs/<experiment>/<run>"),
    adapter: str = typer.Option("best", "--adapter", help="best (best/, the best validation step) | final (adapter/)"),
    fmt: str = typer.Option(..., "--format", help="peft | mlx | merged (a full Hugging Face model: base + adapter)"),
    out: Path = typer.Option(..., "--out", help="the directory to write (must not exist yet, or be empty)"),
    backend: Optional[str] = typer.Option(None, "--backend",
                                          help="merged: the backend that merges (default: the one that trained it)"),
):
    """Export a run's adapter for other tools: PEFT, mlx-lm, or merged into the base model.

    Every export is checked before it is published: an adapter reads back as the same weights, a merged model
    reproduces base + adapter's loss on a probe batch. A 4-bit (nf4) base is dequantized for --format merged.
    """
    from specc.engine.export import export_run

    if backend is not None and unknown_backend(backend):
        raise UserError(f"--backend: {unknown_backend(backend)}")
    err = stderr_console()
    export_run(run_dir, adapter=adapter, fmt=fmt, out=out, backend=backend,
                       log=lambda m: err.print(m, markup=False))
    print(out)
