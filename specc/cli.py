"""The `specc` command line: the app, the command modules it registers, and the one place errors become exit codes.

Every command lives in its own module under specc/commands/ and only calls the library. A command
signals a problem by raising UserError (SpecError for spec issues); `main` prints it, with the
pipeline stage it came from, and exits with its code. Heavy imports (torch, mlx, transformers)
happen only inside commands that train.
"""
from __future__ import annotations

import functools
import importlib
import sys

import typer
from rich.markup import escape

from specc.console import stderr_console
from specc.errors import EXIT_USAGE, SpecError, UserError

EXIT_ABORTED = 130   # Ctrl-C (or a second SIGINT during training)

class _App(typer.Typer):
    """A Typer app whose commands all end the same way: a UserError is printed by `report_error` and becomes
    its exit code (also under typer's CliRunner, which the tests use)."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorate(fn):
            @functools.wraps(fn)
            def handled(*a, **k):
                try:
                    return fn(*a, **k)
                except UserError as exc:
                    report_error(exc)
                    raise typer.Exit(exc.exit_code) from None

            register(handled)
            return fn

        return decorate


app = _App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
           help="Experiment specs for LoRA/QLoRA fine-tuning: check, compile, run, submit, report.")

COMMANDS = ("check", "compile", "schema", "plan", "run", "eval", "export", "submit", "calibrate", "report", "watch", "diff")


def register_commands() -> None:
    """Import every command module; each adds its command(s) to `app`."""
    for name in COMMANDS:
        importlib.import_module(f"specc.commands.{name}")


def report_error(exc: UserError) -> None:
    """How every error reaches the user: the message (user text is escaped, never read as markup), its stage and hint."""
    err = stderr_console()
    if isinstance(exc, SpecError):
        err.print(str(exc), markup=False, emoji=False)
    else:
        stage = f" ({exc.stage})" if exc.stage else ""
        err.print(f"[bold red]error{stage}[/]: {escape(str(exc))}", emoji=False)


def main() -> None:
    register_commands()
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        stderr_console().print("aborted")
        sys.exit(EXIT_ABORTED)
    except UserError as exc:
        report_error(exc)
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
