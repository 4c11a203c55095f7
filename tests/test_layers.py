"""Layers point one way: the imports docs/architecture.md promises, read from the code itself."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package,forbidden", [
    ("specc/plan", ("specc.lifecycle", "specc.engine", "specc.emit", "specc.slurm", "specc.commands")),
    ("specc/estimate", ("specc.lifecycle", "specc.engine", "specc.emit", "specc.slurm", "specc.commands", "specc.plan")),
    ("specc/spec", ("specc.plan", "specc.engine", "specc.lifecycle", "specc.emit", "specc.slurm", "specc.commands")),
    ("specc/engine", ("specc.lifecycle", "specc.emit", "specc.slurm", "specc.commands")),
    ("backends", ("specc.engine", "specc.plan", "specc.lifecycle", "specc.emit", "specc.slurm", "specc.commands",
                  "specc.spec")),
    # The engine and `specc report` use the trackers; the trackers use neither (nor the planner).
    ("specc/tracking", ("specc.engine", "specc.lifecycle", "specc.emit", "specc.slurm", "specc.commands",
                        "specc.plan", "backends")),
])
def test_no_import_runs_back_up(package, forbidden):
    bad = [(f.relative_to(REPO).as_posix(), m) for f in files(package) for m in imports_of(f)
           if m.startswith(forbidden)]
    assert not bad, bad


def test_only_the_cli_turns_errors_into_exit_codes():
    """Commands raise UserError; nothing else prints-and-exits (the one error path is specc/cli.py)."""
    offenders = [f.relative_to(REPO).as_posix() for f in files("specc/commands")
                 if "def fail(" in f.read_text() or "fail(" in f.read_text().replace("_fail", "")]
    assert not offenders, offenders
