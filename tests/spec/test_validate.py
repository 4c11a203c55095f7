"""Spec validation: strict fields, every error at once, each at the file:line:col that caused it."""
from __future__ import annotations

from pathlib import Path

import pytest

from specc.errors import SpecError
from specc.spec.model import Spec, format_time, parse_time
from specc.spec.validate import did_you_mean, load_spec
from tests.spec_texts import FOUR_MISTAKES

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_validate(path):
    assert load_spec(path).spec.experiment


def load_problems(path):
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.issues




def test_all_errors_at_once_each_with_its_line(write_spec, line_of):
    path = write_spec(text=FOUR_MISTAKES)
    issues = load_problems(path)
    assert len(issues) == 4, issues
    by_path = {i.path: i for i in issues}
    assert set(by_path) == {"model.quantization", "training.lerning_rate", "resources.mem", "trainig"}
    for needle, field in [("quantization: int4", "model.quantization"), ("lerning_rate", "training.lerning_rate"),
                          ("mem: 16GB", "resources.mem"), ("trainig", "trainig")]:
        issue = by_path[field]
        assert issue.file == str(path)
        assert issue.line == line_of(FOUR_MISTAKES, needle), issue
        assert issue.col >= 1
    assert "did you mean 'lr'?" in by_path["training.lerning_rate"].message
    assert "did you mean 'training'?" in by_path["trainig"].message
    assert "got 'int4'" in by_path["model.quantization"].message
    text = str(SpecError(issues))
    assert len(text.splitlines()) == 5 and text.endswith("4 problems found; nothing was written.")
    assert all(line.startswith(f"{path}:") for line in text.splitlines()[:4])


@pytest.mark.parametrize("key, valid, expected", [
    ("trainig", list(Spec.model_fields), "training"),
    ("lerning_rate", ["max_steps", "epochs", "batch_size", "lr", "schedule"], "lr"),
    ("learning_rate", ["max_steps", "epochs", "batch_size", "lr", "schedule"], "lr"),
    ("batchsize", ["batch_size", "grad_accum", "lr"], "batch_size"),
    ("warmup", ["kind", "warmup_steps", "min_lr_ratio"], "warmup_steps"),
    ("gradient_accumulation_steps", ["batch_size", "grad_accum"], "grad_accum"),
    ("zzzz", ["batch_size", "grad_accum"], None),
    ("learning_rate", ["path", "size"], None),   # a synonym only when its target is valid here
])
def test_did_you_mean(key, valid, expected):
    assert did_you_mean(key, valid) == expected


def test_unknown_key_without_a_close_match_lists_the_valid_keys(write_spec):
    [issue] = load_problems(write_spec({"model": {"zzzzzz": 1}}))
    assert "valid keys: path, size, quantization" in issue.message


def test_missing_required_key_is_anchored_at_its_parent(write_spec, line_of):
    path = write_spec(drop=["model.path"])
    [issue] = load_problems(path)
    assert issue.message == "missing required key 'path'"
    assert issue.line == line_of(path.read_text(), "size: 1B")


@pytest.mark.parametrize("name", ["exp", "exp-1.2_b", "A.B", "...", "-x", "a" * 128])
def test_experiment_slug_accepted(write_spec, name):
    assert load_spec(write_spec({"experiment": name})).spec.experiment == name


@pytest.mark.parametrize("name", [".", "..", "a/b", "../up", "a b", "x\ny", "$(touch CANARY)", "a;b", "é", "",
                                  "a" * 129, "`id`"])
def test_experiment_slug_rejected(write_spec, name):
    [issue] = load_problems(write_spec({"experiment": name}))
    assert issue.path == "experiment"


def test_max_steps_and_epochs_are_exclusive(write_spec):
    [issue] = load_problems(write_spec({"training": {"epochs": 2}}))
    assert "exactly one of training.max_steps and training.epochs" in issue.message
    [issue] = load_problems(write_spec(drop=["training.max_steps"]))
    assert "exactly one" in issue.message


@pytest.mark.parametrize("field, value", [
    ("lr", ".inf"), ("lr", ".nan"), ("epochs", ".inf"), ("lr", "0"), ("lr", "2"),
])
def test_non_finite_and_out_of_range_numbers(write_spec, field, value):
    text = Path(write_spec()).read_text().replace("  lr: 0.0001", f"  lr: {value}")
    if field == "epochs":
        text = text.replace("  max_steps: 100", f"  epochs: {value}").replace(f"  lr: {value}", "  lr: 0.0001")
    issues = load_problems(write_spec(text=text))
    assert [i.path for i in issues] == [f"training.{field}"]


@pytest.mark.parametrize("field, value", [
    ("partition", "a\nb"), ("qos", "q\tx"), ("gpu_type", "a100\r"), ("cluster", "c\x00"), ("partition", ""),
])
def test_names_that_reach_scripts_reject_control_characters(write_spec, field, value):
    [issue] = load_problems(write_spec({"resources": {field: value}}))
    assert issue.path == f"resources.{field}"


@pytest.mark.parametrize("mem", ["16GB", "16 G", "$(id)", "16G;x", "-1G", "g"])
def test_mem_is_validated(write_spec, mem):
    [issue] = load_problems(write_spec({"resources": {"mem": mem}}))
    assert issue.path == "resources.mem"


@pytest.mark.parametrize("text, seconds", [
    ("00:20", 20 * 60), ("01:02:03", 3723), ("2-00:00:00", 2 * 86400), ("1-12:30", 86400 + 12 * 3600 + 1800),
])
def test_parse_time(text, seconds):
    assert parse_time(text) == seconds
    assert parse_time(format_time(seconds)) == seconds


@pytest.mark.parametrize("text", ["1 day", "12", "00:60:00", "00:00:60", "a-01:00:00", "1:2:3:4"])
def test_parse_time_rejects(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_bad_time_in_spec_is_reported(write_spec):
    [issue] = load_problems(write_spec({"resources": {"time": "1 day"}}))
    assert issue.path == "resources.time" and "D-HH:MM:SS" in issue.message


def test_defaults_are_explicit_after_validation(write_spec):
    spec = load_spec(write_spec()).spec
    dumped = spec.model_dump(mode="json")
    assert dumped["training"]["schedule"] == {"kind": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1,
                                              "decay_fraction": 0.2}
    assert dumped["model"]["lora"]["rank"] == 8 and dumped["backend"] == "auto" and dumped["profile"] == "custom"


def test_schema_forbids_unknown_keys():
    schema = Spec.model_json_schema()
    assert schema["additionalProperties"] is False
    assert all(d.get("additionalProperties") is False for d in schema["$defs"].values() if d.get("type") == "object")
