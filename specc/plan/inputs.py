"""Are the model and data a plan names usable? The checks `specc run` makes, made before it runs.

`specc check` and `specc plan` call this, so a missing data file, a broken JSONL line or a model
without a tokenizer fails there (exit 1, the same messages as `specc run`), not an hour into a queue.
Only what is on this machine is checked: a path whose directory does not exist here is "elsewhere"
(a cluster path reviewed on a laptop) and reported as a note, not an error. `builtin:` inputs are
always fine. Nothing here imports torch, mlx or transformers: files are checked, not loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from specc.errors import SpecIssue, UserError

SPLITS = ("train", "valid", "test")


@dataclass
class InputReport:
    problems: list[SpecIssue] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)     # paths not on this machine, checked where they are


def _here(path: Path) -> bool:
    """The path exists, or at least the directory it would be in does (so its absence is a mistake)."""
    return path.exists() or path.parent.is_dir()


def check_inputs(plan, loaded) -> InputReport:
    """Check every distinct model directory and data split of `plan`'s runs (paths as `specc run` resolves them)."""
    from specc.data.jsonl import verify_dataset
    from specc.model_check import check_model_dir

    report = InputReport()
    seen: set = set()
    located = loaded.located
    for run in plan.runs:
        model = run.config["model"]["path"]
        if ("model", model) not in seen:
            seen.add(("model", model))
            path = Path(model)
            if model.startswith("builtin:"):
                pass
            elif not _here(path):
                report.elsewhere.append(f"model.path {model}")
            else:
                try:
                    check_model_dir(path)
                except UserError as exc:
                    report.problems.append(_issue(located, run, ("model", "path"), exc))
        data = run.config["data"]
        for split in SPLITS:
            value = data.get(split)
            if value is None or ("data", split, value, data["format"]) in seen:
                continue
            seen.add(("data", split, value, data["format"]))
            if value.startswith("builtin:"):
                continue
            path = Path(value)
            if not _here(path):
                report.elsewhere.append(f"data.{split} {value}")
                continue
            try:
                verify_dataset({split: path}, data["format"])
            except UserError as exc:
                report.problems.append(_issue(located, run, ("data", split), exc))
    return report


def _issue(located, run, path: tuple, exc: UserError) -> SpecIssue:
    """The error, whole (every bad line and the hint), anchored at the spec field that names the file."""
    line, col = located.where(path)
    dotted = ".".join(path)
    where = f"{exc.where}: " if exc.where and exc.where != dotted else ""
    hint = f"\n  hint: {exc.hint}" if exc.hint else ""
    return SpecIssue(located.file, line, col, f"{where}{exc.message}{hint}", dotted)
