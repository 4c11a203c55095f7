"""Errors a user can act on. The CLI prints them without a traceback and exits with `exit_code`."""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass


class UserError(Exception):
    """Bad input or an environment problem: says what is wrong, where, and how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None, stage: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where
        self.stage = stage     # the pipeline stage it came from: spec, plan, emit, run, submit, ...

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec, anchored at the YAML that caused it."""
    file: str
    line: int          # 1-based
    col: int           # 1-based
    message: str
    path: str = ""     # dotted field path, e.g. "training.schedule.warmup_steps"

    def __str__(self) -> str:
        field = f" [{self.path}]" if self.path else ""
        return f"{self.file}:{self.line}:{self.col}:{field} {self.message}"


@contextmanager
def stage(name: str):
    """Tag every UserError that leaves the block with the stage it came from (unless a deeper stage did)."""
    try:
        yield
    except UserError as exc:
        if exc.stage is None:
            exc.stage = name
        raise


def staged(name: str):
    """Decorator form of `stage`: the function is one stage of the pipeline."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with stage(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


class SpecError(UserError):
    """All the problems found in one or more specs, reported together."""

    def __init__(self, issues: list[SpecIssue], stage: str | None = None):
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.col, i.message))
        n = len(self.issues)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} found", stage=stage)

    def __str__(self) -> str:
        lines = [str(i) for i in self.issues]
        # Issues always point into the spec (file:line:col); the stage is said when planning, not loading, found them.
        where = f" ({self.stage})" if self.stage and self.stage != "spec" else ""
        lines.append(f"{len(self.issues)} problem{'s' if len(self.issues) != 1 else ''} found{where}; nothing was written.")
        return "\n".join(lines)


# Exit codes (stable, see docs/architecture.md).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 65
EXIT_INTERRUPTED = 75
