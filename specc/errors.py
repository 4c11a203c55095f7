"""Errors a user can act on. The CLI prints them without a traceback and exits with `exit_code`."""
from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """Bad input or an environment problem: says what is wrong, where, and how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

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


class SpecError(UserError):
    """All the problems found in one or more specs, reported together."""

    def __init__(self, issues: list[SpecIssue]):
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.col, i.message))
        n = len(self.issues)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} found")

    def __str__(self) -> str:
        lines = [str(i) for i in self.issues]
        lines.append(f"{len(self.issues)} problem{'s' if len(self.issues) != 1 else ''} found; nothing was written.")
        return "\n".join(lines)


# Exit codes (stable, see docs/architecture.md).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 65
EXIT_INTERRUPTED = 75
