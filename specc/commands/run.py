"""`specc run`: train one run locally (or inside a SLURM job), resuming from its newest valid checkpoint."""
from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Optional

import typer

from backends import unknown_backend
from specc.cli import app, report_error
from specc.console import stderr_console

err = stderr_console()
from specc.errors import EXIT_FAILED, EXIT_INTERRUPTED, UserError


@app.command()
def run(
    target: Path = typer.Argument(..., help="a spec (specs/x.yaml) or a compiled generated/<exp>/<run>/config.json"),
    run_name: Optional[str] = typer.Option(None, "--run", help="which run of a sweep spec"),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch, mlx or a registered plugin (overrides the spec)"),
    resume: str = typer.Option("auto", "--resume", help="auto (newest valid checkpoint) | never | PATH"),
    extend_steps: Optional[int] = typer.Option(None, "--extend-steps", min=1,
                                               help="resume and extend to N total steps, decaying to the minimum lr (strategy A)"),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="start a fresh schedule from these adapter weights (strategy B)"),
    stage: Optional[str] = typer.Option(None, "--stage", help="test: the short gating run, in <run>.test/"),
    all_runs: bool = typer.Option(False, "--all", help="every run of the spec, one after another, control runs included"),
):
    """Train a run: checkpoints, validation with a best adapter, early stopping, progress, auto-resume.

    Exit codes: 0 completed or early-stopped, 1 bad input or failure, 65 diverged, 75 interrupted after a checkpoint.
    """
    from specc.engine.config import load_run_config
    from specc.engine.loop import RunOptions

    if backend is not None and unknown_backend(backend):
        raise UserError(f"--backend: {unknown_backend(backend)}")
    opts = RunOptions(backend=backend, resume=resume, extend_steps=extend_steps, init_from=init_from, stage=stage)
    if all_runs:
        raise typer.Exit(_run_all(target, run_name, opts))
    cfg = load_run_config(target, run_name)
    raise typer.Exit(_run_one(cfg, opts))


def _run_one(cfg, opts) -> int:
    """One run, start to end; its exit code."""
    from specc.engine.loop import EXIT_CODES, train
    from specc.engine.session import evaluate_control, open_session

    try:
        with _interrupt_during_setup():
            session = open_session(cfg, opts, err)
        summary = evaluate_control(session) if session.cfg.kind == "control" else train(session)
    except UserError as exc:   # printed here, so that --all goes on with the next run
        report_error(exc)
        return exc.exit_code
    except _SetupInterrupted as exc:
        err.print(f"{exc.signal_name} while loading the model and data: nothing trained since the last checkpoint, "
                  "so nothing to save; exiting 75 (safe to requeue)", markup=False)
        return EXIT_INTERRUPTED
    return EXIT_CODES.get(summary["status"], EXIT_FAILED)


def _run_all(target: Path, run_name: Optional[str], opts) -> int:
    """`--all`: every run of a spec in order, training runs first as planned, control runs included.

    A run that fails or diverges does not stop the others; a signal (exit 75) stops the sequence, and
    running the command again resumes where it was. The exit code is the worst one seen."""
    from specc.engine.config import from_dict
    from specc.errors import EXIT_DIVERGED
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    if run_name is not None:
        raise UserError("--all runs every run of the spec; drop --run (or drop --all to run one)")
    if target.suffix == ".json":
        raise UserError("--all needs the spec, not one run's config.json", hint=f"pass the spec that {target} was compiled from")
    plan = plan_experiment(load_spec(target))
    results: list[tuple[str, int]] = []
    for run in plan.runs:
        err.print(f"── {plan.experiment}/{run.name} ({run.kind}, {len(results) + 1} of {len(plan.runs)}) ──", markup=False)
        code = _run_one(from_dict(dict(run.config, source=str(target)), str(target)), opts)
        results.append((run.name, code))
        if code == EXIT_INTERRUPTED:
            break
    done = ", ".join(f"{name}: exit {code}" for name, code in results)
    left = len(plan.runs) - len(results)
    err.print(f"--all: {done}" + (f"; {left} run(s) not started (interrupted: run the command again to go on)"
                                  if left else ""), markup=False)
    codes = [c for _, c in results]
    for worst in (EXIT_INTERRUPTED, EXIT_FAILED, EXIT_DIVERGED):
        if worst in codes:
            return worst
    return max(codes, default=0)


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
