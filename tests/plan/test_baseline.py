"""Changes against a baseline are computed from both resolved specs, not only what the author listed."""
from __future__ import annotations

import shutil
from pathlib import Path

from specc.emit.writer import render_experiment
from specc.plan.baseline import field_changes, find_baseline_spec, flatten, resolve_baseline
from specc.spec.validate import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


def test_larger_batch_against_its_baseline(plan_spec):
    plan = plan_spec(SPECS / "larger-batch.yaml")
    baseline = resolve_baseline("batch32-baseline.yaml", SPECS / "larger-batch.yaml", plan.runs[0].spec)
    assert baseline.spec_path == SPECS / "batch32-baseline.yaml"
    changes = {field: (old, new) for field, old, new in baseline.changes}
    assert changes == {
        "training.batch_size": (32, 128),
        "training.lr": (1e-4, 4e-4),
        "training.schedule.warmup_steps": (500, 2000),
        # Not in the author's list, computed anyway:
        "training.max_steps": (20000, 5000),
        "resources.time": ("1-00:00:00", "12:00:00"),
    }


def test_plan_md_lists_the_computed_changes(plan_spec):
    loaded = load_spec(SPECS / "larger-batch.yaml")
    plan_md = render_experiment(loaded, plan_spec(SPECS / "larger-batch.yaml"))["plan.md"]
    assert "| `training.batch_size` | 32 | 128 |" in plan_md
    assert "| `training.lr` | 0.0001 | 0.0004 |" in plan_md
    assert "| `training.schedule.warmup_steps` | 500 | 2000 |" in plan_md
    assert "| `training.max_steps` | 20000 | 5000 |" in plan_md   # the author did not list it
    assert "- batch_size: 32 → 128" in plan_md                     # the author's own list is shown too


def test_baseline_by_experiment_name(tmp_path, write_spec, plan_spec):
    base = write_spec({"experiment": "base"}, name="base.yaml")
    new = write_spec({"experiment": "new", "baseline": "base", "training": {"lr": 2e-4}}, name="new.yaml")
    write_spec(text="not: [valid", name="broken.yaml")   # other specs beside it may be broken
    assert find_baseline_spec("base", new) == base
    baseline = resolve_baseline("base", new, plan_spec(new).runs[0].spec)
    assert baseline.changes == (("training.lr", 1e-4, 2e-4),)


def test_identical_baseline_has_no_changes(tmp_path, write_spec, plan_spec):
    write_spec({"experiment": "base"}, name="base.yaml")
    new = write_spec({"experiment": "same", "baseline": "base.yaml",
                      "hypothesis": {"statement": "other words"}}, name="new.yaml")
    files = render_experiment(load_spec(new), plan_spec(new))
    assert "No resolved field differs from the baseline." in files["plan.md"]


def test_missing_baseline_is_a_note_not_an_error(write_spec, plan_spec):
    path = write_spec({"baseline": "exp-2024-01-10-baseline"})
    files = render_experiment(load_spec(path), plan_spec(path))
    assert "no spec with that experiment name found beside spec.yaml; results are looked up in " \
           "runs/exp-2024-01-10-baseline/" in files["plan.md"]
    assert resolve_baseline("gone.yaml", path, plan_spec(path).runs[0].spec).spec_path is None


def test_baseline_relative_to_the_spec(tmp_path, plan_spec):
    shutil.copy(SPECS / "batch32-baseline.yaml", tmp_path / "batch32-baseline.yaml")
    (tmp_path / "sub").mkdir()
    text = (SPECS / "larger-batch.yaml").read_text().replace("baseline: batch32-baseline.yaml",
                                                             "baseline: ../batch32-baseline.yaml")
    (tmp_path / "sub" / "lb.yaml").write_text(text)
    baseline = resolve_baseline("../batch32-baseline.yaml", tmp_path / "sub" / "lb.yaml",
                                plan_spec(tmp_path / "sub" / "lb.yaml").runs[0].spec)
    assert ("training.batch_size", 32, 128) in baseline.changes


def test_flatten_and_field_changes():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    old = {"experiment": "x", "hypothesis": {"statement": "a"}, "training": {"lr": 1, "seed": 0}}
    new = {"experiment": "y", "hypothesis": {"statement": "b"}, "training": {"lr": 2, "seed": 0}, "extra": 1}
    assert field_changes(old, new) == [("extra", None, 1), ("training.lr", 1, 2)]
