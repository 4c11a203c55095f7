"""`specc run`: train one run locally (or inside a SLURM job), resuming from its newest valid checkpoint."""
from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Optional

import typer

from specc.cli import app, err, fail
from specc.errors import EXIT_FAILED, EXIT_INTERRUPTED, UserError


@app.command()
def run(
    target: Path = typer.Argument(..., help="a spec (specs/x.yaml) or a compiled generated/<exp>/<run>/config.json"),
    run_name: Optional[str] = typer.Option(None, "--run", help="which run of a sweep spec"),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch | mlx (overrides the spec)"),
    resume: str = typer.Option("auto", "--resume", help="auto (newest valid checkpoint) | never | PATH"),
    extend_steps: Optional[int] = typer.Option(None, "--extend-steps", min=1,
                                               help="resume and extend to N total steps, decaying to the minimum lr (strategy A)"),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="start a fresh schedule from these adapter weights (strategy B)"),
    stage: Optional[str] = typer.Option(None, "--stage", help="test: the short gating run, in <run>.test/"),
):
    """Train a run: checkpoints, validation with a best adapter, early stopping, progress, auto-resume.

    Exit codes: 0 completed or early-stopped, 1 bad input or failure, 65 diverged, 75 interrupted after a checkpoint.
    """
    from specc.engine.config import load_run_config
    from specc.engine.loop import EXIT_CODES, RunOptions, train
    from specc.engine.session import evaluate_control, open_session

    if backend not in (None, "torch", "mlx"):
        fail(UserError(f"--backend {backend!r}: choose torch or mlx"))
    if extend_steps is not None and init_from is not None:
        fail(UserError("--extend-steps and --init-from are two different strategies; use one"))
    if extend_steps is not None and resume == "never":
        fail(UserError("--extend-steps resumes a run; it cannot be combined with --resume never"))
    try:
        cfg = load_run_config(target, run_name)
        opts = RunOptions(backend=backend, resume=resume, extend_steps=extend_steps, init_from=init_from, stage=stage)
        with _interrupt_during_setup():
            session = open_session(cfg, opts, err)
        summary = evaluate_control(session) if session.cfg.kind == "control" else train(session)
    except UserError as exc:
        fail(exc)
    except _SetupInterrupted as exc:
        err.print(f"{exc.signal_name} while loading the model and data: nothing trained since the last checkpoint, "
                  "so nothing to save; exiting 75 (safe to requeue)", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_CODES.get(summary["status"], EXIT_FAILED))


class _SetupInterrupted(Exception):
    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def _interrupt_during_setup():
    """Preemption can arrive before the first step; training's own SignalGuard takes over after setup."""
    def handle(signum, frame):
        raise _SetupInterrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
