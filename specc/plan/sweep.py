"""Sweep expansion: the matrix's points, each point's spec (re-validated where it changed), run names.

Every problem is anchored at the matrix value that caused it, so a bad axis value is reported at its
own line, once.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, TypeAdapter, ValidationError

from specc.errors import SpecIssue
from specc.spec.model import Spec
from specc.spec.validate import fields_at, model_of, pydantic_issues

PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")


def set_path(data: dict, path: tuple, value) -> dict:
    """A copy of `data` with `value` at `path` (a mapping is merged into a mapping); shares what it leaves alone."""
    head, current = path[0], data.get(path[0])
    out = dict(data)
    if len(path) > 1:
        out[head] = set_path(current if isinstance(current, dict) else {}, path[1:], value)
    elif isinstance(value, dict) and isinstance(current, dict):
        out[head] = merged(current, value)
    else:
        out[head] = value
    return out


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dotted_value(data, path: str):
    cur = data
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(path)
    return cur


def format_value(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def run_name(template: str, resolved: dict) -> str:
    """Fill `{dotted.field}` placeholders from a run's resolved spec."""
    return PLACEHOLDER.sub(lambda m: format_value(dotted_value(resolved, m.group(1))), template)


def plain(value):
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


@lru_cache(maxsize=None)
def section_adapter(section: str) -> tuple[TypeAdapter, type[BaseModel] | None]:
    annotation = Spec.model_fields[section].annotation
    return TypeAdapter(annotation, config=None if model_of(annotation) else Spec.model_config), model_of(annotation)


def validate_point(spec: Spec, raw: dict, point, located, issues: list[SpecIssue]) -> Spec | None:
    """The spec at a sweep point: only the sections the point changes are validated again.

    The sections of a spec are independent (Spec has no cross-section validator), so this gives the
    same result as validating the whole spec, and untouched sections stay the very same objects.
    """
    update = {}
    for section in dict.fromkeys(key.split(".")[0] for key, _ in point):
        adapter, model = section_adapter(section)
        try:
            update[section] = adapter.validate_python(raw.get(section))
        except ValidationError as exc:
            issues += pydantic_issues(exc, located, model or Spec, prefix=(section,))
    return None if issues else spec.model_copy(update=update)


def point_issue(located, issue: SpecIssue, point, value_index) -> SpecIssue:
    """Anchor a sweep point's validation problem at the matrix value that caused it."""
    field = tuple(issue.path.split(".")) if issue.path else ()
    for key, value in sorted(point, key=lambda kv: -kv[0].count(".")):   # the most specific axis first
        axis = tuple(key.split("."))
        if field[:len(axis)] == axis or not field:
            where = ("sweep", "matrix", key, value_index[key].index(value)) + field[len(axis):]
            line, col = located.where_key(where) if len(field) > len(axis) else located.where(where)
            label = f"{key}={format_value(value) if not isinstance(value, dict) else '{…}'}"
            return SpecIssue(issue.file, line, col, f"sweep value {label}: {issue.message}", issue.path)
    label = ", ".join(f"{k}={format_value(v) if not isinstance(v, dict) else '{…}'}" for k, v in point)
    return SpecIssue(issue.file, issue.line, issue.col, f"sweep point ({label}): {issue.message}", issue.path)


def point_label(point) -> str:
    return "(" + ", ".join(f"{k}={format_value(v) if not isinstance(v, dict) else '{…}'}" for k, v in point) + ")" if point else "the base spec"


def control_label(spec: Spec) -> str:
    label = spec.model.size if spec.model.size != "unknown" else Path(spec.model.path.split(":")[-1]).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", label) or "base"


def valid_field_path(path: tuple) -> bool:
    if not path or path[0] not in Spec.model_fields:
        return False
    if len(path) == 1:
        return True
    return path[-1] in fields_at(Spec, path[:-1])


def apply_resource_rules(spec: Spec, run_spec: Spec, located, issues: list[SpecIssue]) -> tuple[Spec, tuple]:
    """The first sweep.resources rule whose `when` matches the run sets its resources (re-validated)."""
    for i, rule in enumerate(spec.sweep.resources if spec.sweep else ()):
        values = {}
        for key in rule.when:
            if not valid_field_path(tuple(key.split("."))):
                issues.append(located.issue(("sweep", "resources", i, "when", key), f"{key!r} is not a spec field",
                                            key=True))
                return run_spec, ()
            try:
                values[key] = dotted_value({s: plain(getattr(run_spec, s)) for s in (key.split(".")[0],)}, key)
            except KeyError:
                values[key] = None
        if all(values[k] == v or format_value(values[k]) == format_value(v) for k, v in rule.when.items()):
            adapter, model = section_adapter("resources")
            try:
                resources = adapter.validate_python(merged(run_spec.resources.model_dump(exclude_unset=True), rule.set))
            except ValidationError as exc:
                issues += [SpecIssue(x.file, x.line, x.col, f"sweep.resources[{i}]: {x.message}", x.path)
                           for x in pydantic_issues(exc, located, model, prefix=("sweep", "resources", i, "set"))]
                return run_spec, ()
            source = f"sweep.resources[{i}]"
            return run_spec.model_copy(update={"resources": resources}), tuple((f"resources.{k}", source) for k in rule.set)
    return run_spec, ()
