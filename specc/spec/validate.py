"""Spec validation: pydantic errors become file:line:col issues, all of them at once."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from specc.errors import SpecError, SpecIssue, staged
from specc.spec.loader import Located, load_yaml
from specc.spec.model import Spec


@dataclass(frozen=True)
class LoadedSpec:
    path: Path
    located: Located
    spec: Spec


# Names other tools use for our fields, so that `learning_rate` suggests `lr`.
SYNONYMS = {
    "learning_rate": "lr", "peak_lr": "lr", "lr_schedule": "schedule", "warmup": "warmup_steps",
    "num_epochs": "epochs", "steps": "max_steps", "gradient_accumulation_steps": "grad_accum",
    "gradient_accumulation": "grad_accum", "max_seq_length": "max_length", "seq_len": "max_length",
    "lora_rank": "rank", "r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "time_limit": "time",
}


def did_you_mean(key: str, valid: list[str]) -> str | None:
    """The valid field a mistyped key most likely meant, typos of other tools' names included."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return close[0]
    aliases = [a for a, target in SYNONYMS.items() if target in valid]
    close = difflib.get_close_matches(key.lower(), aliases, n=1, cutoff=0.75)
    return SYNONYMS[close[0]] if close else None


def fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """Field names valid at `path` inside `model` (for did-you-mean), best effort."""
    current = model
    for part in path:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = model_of(field.annotation)
    return list(getattr(current, "model_fields", {}) or [])


def model_of(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        m = model_of(arg)
        if m is not None:
            return m
    return None


def pydantic_issues(exc: ValidationError, located: Located, model: type[BaseModel], prefix: tuple = ()) -> list[SpecIssue]:
    """Turn every pydantic error into an issue anchored at the YAML node that caused it."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        kind = err["type"]
        if loc and loc[-1] == "[key]":   # a bad mapping key: point at the key itself
            msg = err["msg"].removeprefix("Value error, ")
            issues.append(located.issue(loc[:-1], f"key {loc[-2]!r}: {msg}", key=True))
        elif kind == "extra_forbidden":
            key = loc[-1]
            valid = fields_at(model, loc[len(prefix):-1])
            close = did_you_mean(str(key), valid)
            hint = f"; did you mean {close!r}?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
            issues.append(located.issue(loc, f"unknown key {key!r}{hint}", key=True))
        elif kind == "missing":
            issues.append(located.issue(loc[:-1], f"missing required key {loc[-1]!r}"))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if kind.startswith(("literal_error", "enum")):
                msg = f"{msg} (got {err.get('input')!r})"
            issues.append(located.issue(loc, msg))
    return issues


@staged("spec")
def load_spec(path: Path) -> LoadedSpec:
    """Read and validate one spec file; raise SpecError with every problem found."""
    located = load_yaml(path)
    if not isinstance(located.data, dict):
        raise SpecError([located.issue((), "a spec must be a mapping with keys such as experiment, model, data, training")])
    try:
        spec = Spec.model_validate(located.data)
    except ValidationError as exc:
        raise SpecError(pydantic_issues(exc, located, Spec)) from None
    return LoadedSpec(Path(path), located, spec)
