"""`specc eval`: score a run's evaluation tasks on demand."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from specc.cli import app
from specc.console import stderr_console


@app.command("eval")
def eval_command(
    target: Path = typer.Argument(..., help="a run directory (runs/<exp>/<run>) or a spec (every run of it)"),
    adapter: str = typer.Option("best", "--adapter", help="best | final | PATH (an adapter or checkpoint directory)"),
    base: bool = typer.Option(False, "--base", help="score the base model, no adapter (results in RUN_DIR/eval/base/)"),
    task: Optional[str] = typer.Option(None, "--task", help="only this task"),
    backend: Optional[str] = typer.Option(None, "--backend", help="default: the backend that wrote the adapter"),
):
    """Score the tasks of the spec's evaluation section: RUN_DIR/eval/<task>.json, samples, summary.json."""
    from specc.engine.rescore import configs_of, rescore

    err = stderr_console()
    for cfg in configs_of(target):
        err.print(f"── {cfg.experiment}/{cfg.run} ({cfg.kind}) ──", markup=False)
        rescore(cfg, adapter=adapter, base=base, task=task, backend_name=backend,
                say=lambda m: err.print(m, markup=False))
