"""Read and validate JSONL datasets in the three supported formats.

One JSON object per line; blank lines are skipped. Every problem is reported as a UserError naming
file:line, what is wrong and how to fix it. Problems are collected across the whole file (up to
MAX_REPORTED are listed) so a user fixes a broken file in one pass instead of one error per run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from specc.errors import UserError

FORMATS = ("text", "prompt_completion", "chat")
CHAT_ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20

# What one line looks like, shown in hints.
SHAPES = {
    "text": '{"text": "..."}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
}
# The key that gives a line's format away, to suggest the right `format` when the user picked another.
TELLTALE_KEYS = {"text": "text", "prompt_completion": "completion", "chat": "messages"}


@dataclass(frozen=True)
class SplitReport:
    name: str           # "train", "validation", ...
    path: Path
    n_examples: int
    sha256: str         # of the file's bytes, so a checkpoint or plan can tell if the data changed


@dataclass(frozen=True)
class DatasetReport:
    format: str
    splits: tuple[SplitReport, ...]

    def split(self, name: str) -> SplitReport:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, object]:
        return {
            "format": self.format,
            "splits": {s.name: {"path": str(s.path), "n_examples": s.n_examples, "sha256": s.sha256}
                       for s in self.splits},
        }


def read_examples(path: Path, fmt: str) -> list[dict]:
    """All examples of one JSONL file, validated against `fmt`. Raises UserError listing every problem."""
    return _read(Path(path), fmt)[0]


def load_dataset(splits: dict[str, Path | None], fmt: str) -> tuple[dict[str, list[dict]], DatasetReport]:
    """Read every given split (None = split not configured, skipped) once; problems in all splits are
    reported together in one UserError."""
    _check_format(fmt)
    examples: dict[str, list[dict]] = {}
    reports: list[SplitReport] = []
    errors: list[UserError] = []
    for name, path in splits.items():
        if path is None:
            continue
        try:
            rows, digest = _read(Path(path), fmt, split=name)
        except UserError as e:
            errors.append(e)
            continue
        examples[name] = rows
        reports.append(SplitReport(name, Path(path), len(rows), digest))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise UserError(f"problems in {len(errors)} dataset splits:\n" + "\n".join(str(e) for e in errors),
                        hint=f"each line of a {fmt!r} file must look like {SHAPES[fmt]}")
    return examples, DatasetReport(fmt, tuple(reports))


def verify_dataset(splits: dict[str, Path | None], fmt: str) -> DatasetReport:
    """Validate every split without keeping the examples (for `specc check` / the plan)."""
    return load_dataset(splits, fmt)[1]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown data format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")


def _read(path: Path, fmt: str, split: str | None = None) -> tuple[list[dict], str]:
    _check_format(fmt)
    label = f"{split} split" if split else "dataset"
    if not path.is_file():
        raise UserError(f"{label} file not found: {path}", where=str(path), hint=_what_is_there(path))
    data = path.read_bytes()
    examples: list[dict] = []
    problems: list[str] = []
    n_problem_lines = 0
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        example, problem = _parse_line(raw, lineno, fmt)
        if problem is not None:
            n_problem_lines += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"{path}:{lineno}: {problem}")
        elif example is not None:
            examples.append(example)
    if problems:
        more = n_problem_lines - len(problems)
        listing = "\n".join(f"  {p}" for p in problems) + (f"\n  ... and {more} more" if more else "")
        raise UserError(
            f"{n_problem_lines} bad line{'s' if n_problem_lines != 1 else ''} in {label} "
            f"(format {fmt!r}):\n{listing}",
            where=str(path),
            hint=f"each non-blank line of a {fmt!r} file must be one JSON object like {SHAPES[fmt]}")
    if not examples:
        raise UserError(f"{label} has no examples (the file is empty or only blank lines)", where=str(path),
                        hint=f"add one JSON object per line like {SHAPES[fmt]}, or remove this split from the spec")
    return examples, hashlib.sha256(data).hexdigest()


def _what_is_there(path: Path) -> str:
    parent = path.parent
    if not parent.is_dir():
        return f"the directory {parent} does not exist either; paths in a spec are relative to the spec file"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in parent.iterdir())
    if not names:
        return f"{parent} is empty"
    shown = ", ".join(names[:30]) + (f", ... ({len(names)} entries)" if len(names) > 30 else "")
    return f"{parent} contains: {shown}"


def _parse_line(raw: bytes, lineno: int, fmt: str) -> tuple[dict | None, str | None]:
    """(example, None), (None, problem) or (None, None) for a blank line."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM written by some editors
        raw = raw[3:]
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, (f"not valid UTF-8 (byte {e.start + 1} of the line is 0x{raw[e.start]:02x}); "
                      "re-save the file as UTF-8")
    if not line.strip():
        return None, None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON at column {e.colno}: {e.msg}"
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got a JSON {_json_type(value)}"
    problem = _shape_problem(value, fmt)
    return (None, problem) if problem else (value, None)


def _shape_problem(value: dict, fmt: str) -> str | None:
    if fmt == "text":
        problem = _string_field(value, "text", fmt)
    elif fmt == "prompt_completion":
        problem = _string_field(value, "prompt", fmt) or _string_field(value, "completion", fmt)
    else:
        problem = _chat_problem(value)
    if problem and (other := _looks_like(value, fmt)):
        problem += f" (this line looks like format {other!r}; is `format` in the spec right?)"
    return problem


def _string_field(value: dict, key: str, fmt: str) -> str | None:
    if key not in value:
        return f"missing key {key!r}: format {fmt!r} expects {SHAPES[fmt]}"
    if not isinstance(value[key], str):
        return f"key {key!r} must be a string, got a JSON {_json_type(value[key])}"
    return None


def _chat_problem(value: dict) -> str | None:
    messages = value.get("messages")
    if "messages" not in value:
        return f"missing key 'messages': format 'chat' expects {SHAPES['chat']}"
    if not isinstance(messages, list):
        return f"'messages' must be a list of {{\"role\", \"content\"}} objects, got a JSON {_json_type(messages)}"
    if not messages:
        return "'messages' is empty: a chat example needs at least one user and one assistant message"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] must be an object with 'role' and 'content', got a JSON {_json_type(m)}"
        if m.get("role") not in CHAT_ROLES:
            return f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(m.get('role'))}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content must be a string, got a JSON {_json_type(m.get('content'))}"
    if not any(m["role"] == "assistant" for m in messages):
        return "no 'assistant' message: only assistant turns are trained on, so this example teaches nothing"
    return None


def _looks_like(value: dict, fmt: str) -> str | None:
    return next((f for f, key in TELLTALE_KEYS.items() if f != fmt and key in value), None)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)
