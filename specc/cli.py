"""The `specc` command line. Heavy imports (torch, mlx, transformers) happen only inside commands that train."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from specc.errors import EXIT_FAILED, EXIT_USAGE, SpecError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Experiment specs for LoRA/QLoRA fine-tuning: check, compile, run, submit, report.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(exc: UserError) -> None:
    # Messages hold user text (paths, names): escape it, or "[...]" in it would be read as rich markup.
    err.print(f"[bold red]error[/]: {escape(str(exc))}" if not isinstance(exc, SpecError) else str(exc),
              markup=not isinstance(exc, SpecError), emoji=False)
    raise typer.Exit(exc.exit_code)


def _plan_all(specs: list[Path], counted: dict | None = None):
    """Load and plan every spec, gathering the problems of all of them before failing."""
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    plans, issues = [], []
    for path in specs:
        try:
            loaded = load_spec(path)
            plans.append((loaded, plan_experiment(loaded, counted)))
        except SpecError as exc:
            issues += exc.issues
    if issues:
        raise SpecError(issues)
    seen = {}
    for loaded, plan in plans:
        if plan.experiment in seen:
            raise UserError(f"experiment {plan.experiment!r} is defined by both {seen[plan.experiment]} and {loaded.path}",
                            hint="experiment names must be unique: they are directories under generated/ and runs/")
        seen[plan.experiment] = loaded.path
    return plans


@app.command()
def check(specs: List[Path] = typer.Argument(..., help="spec files")):
    """Validate specs (syntax, fields, cross-field rules, resources) and the model and data files on this machine;
    write nothing."""
    from specc.plan.inputs import check_inputs

    try:
        plans = _plan_all(specs)
        reports = [(loaded, plan, check_inputs(plan, loaded)) for loaded, plan in plans]
        problems = [issue for _, _, r in reports for issue in r.problems]
        if problems:
            raise SpecError(problems)
    except UserError as exc:
        fail(exc)
    for loaded, plan, inputs in reports:
        n_control = sum(r.kind == "control" for r in plan.runs)
        extra = f" + {n_control} control" if n_control else ""
        out.print(f"[green]ok[/] {escape(str(loaded.path))}: experiment {plan.experiment}, "
                  f"{len(plan.runs) - n_control} run(s){extra}")
        for w in plan.warnings:
            out.print(f"  [yellow]warning[/]: {escape(w)}")
        if inputs.elsewhere:
            out.print(f"  note: not on this machine, so not checked here: {escape(', '.join(inputs.elsewhere))}")


@app.command()
def compile(
    specs: List[Path] = typer.Argument(..., help="spec files"),
    out_dir: Path = typer.Option(Path("generated"), "--out", help="where artifacts go"),
    check_only: bool = typer.Option(False, "--check", help="write nothing; exit 1 with a diff when generated/ is stale"),
):
    """Compile specs into reviewable artifacts: plan.md, config.json, schedule.csv, sbatch scripts."""
    from specc.emit.writer import committed_step_counts, render_experiment, stale_diff, write_files

    try:
        plans = _plan_all(specs, committed_step_counts(out_dir))
        rendered = [(loaded, plan, render_experiment(loaded, plan)) for loaded, plan in plans]
    except UserError as exc:
        fail(exc)
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
        else:
            try:
                result = write_files(root, files)
            except OSError as exc:
                fail(UserError(f"cannot write {root}: {exc}", hint="check that --out is a writable directory"))
            out.print(f"[green]compiled[/] {escape(str(loaded.path))} → {escape(str(root))}/ ({len(result.written)} written, "
                      f"{result.unchanged} unchanged, {len(result.removed)} removed; {len(plan.runs)} run(s))")
            for w in plan.warnings:
                out.print(f"  [yellow]warning[/]: {escape(w)}")
    if stale:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def schema():
    """Print the spec's JSON Schema (for editor completion through the YAML language server)."""
    from specc.spec.model import Spec

    s = Spec.model_json_schema()
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    s["title"] = "specc experiment spec"
    sys.stdout.write(json.dumps(s, indent=2, sort_keys=True) + "\n")


def _register_optional():
    """Commands that live in their own modules register themselves here."""
    import importlib
    import importlib.util

    for module in ("specc.commands.run", "specc.commands.submit", "specc.commands.plan", "specc.commands.calibrate",
                   "specc.commands.report", "specc.commands.watch", "specc.commands.diff"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def main() -> None:
    _register_optional()
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except UserError as exc:
        err.print(f"[bold red]error[/]: {escape(str(exc))}", emoji=False)
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and the like
        if isinstance(exc, _click_exceptions()) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
        raise


def _click_exceptions() -> tuple[type, ...]:
    # Recent typer vendors click (typer._click) and raises its own ClickException, a TyperException;
    # older typer raises click's.
    types = [t for t in (getattr(typer, "TyperException", None),) if t is not None]
    try:
        import click

        types.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(types)


if __name__ == "__main__":
    # `python -m specc.cli` (torchrun -m specc.cli): this file runs as __main__, but the command modules
    # register on specc.cli's app, so run that module's main.
    from specc.cli import main as _main

    _main()
