"""The changes against a baseline, computed from both resolved specs (not just what the author listed)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specc.errors import SpecError
from specc.spec.validate import load_spec

IGNORED = ("experiment", "hypothesis", "baseline", "sweep")


@dataclass(frozen=True)
class Baseline:
    ref: str                                    # as written in the spec
    spec_path: Path | None                      # the baseline spec, when one was found
    changes: tuple[tuple[str, object, object], ...]   # (dotted field, baseline value, this value)
    note: str


def flatten(data, prefix: str = "") -> dict[str, object]:
    """{"training": {"lr": 1}} → {"training.lr": 1}; lists stay values."""
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def field_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    a, b = flatten(old), flatten(new)
    missing = object()
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing) and not k.startswith(IGNORED)]


def find_baseline_spec(ref: str, spec_path: Path) -> Path | None:
    """A spec path (relative to the spec), or the spec beside it whose experiment has that name."""
    candidate = (spec_path.parent / ref)
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        return candidate if candidate.is_file() else None
    for other in sorted(spec_path.parent.glob("*.y*ml")):
        if other.resolve() == spec_path.resolve():
            continue
        try:
            if load_spec(other).spec.experiment == ref:
                return other
        except SpecError:
            continue
    return None


def resolve_baseline(ref: str, spec_path: Path, resolved_spec) -> Baseline:
    from specc.plan.runs import plan_experiment

    path = find_baseline_spec(ref, spec_path)
    if path is None:
        kind = "spec file" if ref.endswith((".yaml", ".yml")) or "/" in ref else "spec with that experiment name"
        return Baseline(ref, None, (), f"no {kind} found beside {spec_path.name}; results are looked up in runs/{ref}/")
    base_plan = plan_experiment(load_spec(path))
    base_run = next(r for r in base_plan.runs if r.kind == "train")
    changes = field_changes(base_run.spec.model_dump(mode="json"), resolved_spec.model_dump(mode="json"))
    return Baseline(ref, path, tuple(changes), f"computed against {path.as_posix()} (run {base_run.name})")
