"""The consoles every command prints through: one place decides widths and streams."""
from __future__ import annotations

import shutil

from rich.console import Console


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


class _WideStdout:
    """stdout for tables: wide enough when it is not a terminal (logs, CI, pipes). Built on each use, so
    a test that redirects sys.stdout sees the output."""

    def __init__(self, min_width: int):
        self.min_width = min_width

    def __getattr__(self, name):
        console = Console(highlight=False, soft_wrap=False)
        if not console.is_terminal:
            width = max(shutil.get_terminal_size((self.min_width, 24)).columns, self.min_width)
            console = Console(highlight=False, soft_wrap=False, width=width)
        return getattr(console, name)


def wide_stdout(min_width: int = 160) -> _WideStdout:
    return _WideStdout(min_width)
