"""Shared fixtures for the spec-language tests (tests/spec, tests/plan, tests/emit, tests/test_cli.py).

`write_spec` writes a small valid spec (a dict deep-merged with overrides) into a temporary
directory; `plan_spec` and `spec_problems` run the real loader and planner on it.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from specc.errors import SpecError
from tests.spec_texts import dump_yaml

REPO = Path(__file__).resolve().parent.parent

# A minimal valid spec on the builtin 'local' cluster; tests override what they exercise.
BASE_SPEC = {
    "experiment": "t",
    "hypothesis": {"statement": "a test spec"},
    "model": {"path": "/models/base", "size": "1B"},
    "data": {"train": "/data/train.jsonl", "valid": "/data/valid.jsonl"},
    "training": {"max_steps": 100, "batch_size": 4, "grad_accum": 1, "lr": 1.0e-4,
                 "schedule": {"kind": "cosine", "warmup_steps": 10}},
    "resources": {"cluster": "local", "partition": "debug", "time": "00:20:00"},
}



def merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def line_of():
    """line_of(text, needle) → 1-based number of the first line that contains `needle`."""

    def find(text: str, needle: str) -> int:
        for i, line in enumerate(text.splitlines(), 1):
            if needle in line:
                return i
        raise AssertionError(f"{needle!r} not in the text")

    return find


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(overrides, drop=["model.size"]) or write_spec(text=...) → a spec file in a temporary directory."""

    def write(overrides: dict | None = None, *, text: str | None = None, name: str = "spec.yaml",
              directory: Path | None = None, drop: tuple | list = ()) -> Path:
        directory = directory or tmp_path
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        if text is None:
            data = merged(BASE_SPEC, overrides or {})
            for dotted in drop:
                *parents, last = dotted.split(".")
                node = data
                for part in parents:
                    node = node[part]
                del node[last]
            text = dump_yaml(data)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def plan_spec():
    """plan_spec(path) → ExperimentPlan (raises SpecError when the spec is invalid)."""
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    return lambda path: plan_experiment(load_spec(path))


@pytest.fixture
def spec_problems(plan_spec):
    """spec_problems(path) → the SpecIssues that loading and planning the spec report (asserts there are some)."""

    def problems(path):
        with pytest.raises(SpecError) as info:
            plan_spec(path)
        return info.value.issues

    return problems
