"""Warnings a user should see, all one way: "warning: ..." on stderr (the run log, the SLURM log).

Library code that finds something worth saying but not worth stopping for (a checkpoint it could
not prune, a leftover it repaired, a broken backend plugin) calls `warn`; commands and the engine
print their own warnings the same way, through the same console.
"""
from __future__ import annotations

from specc.console import stderr_console


def warn(message: str) -> None:
    stderr_console().print(f"warning: {message}", markup=False, highlight=False)
