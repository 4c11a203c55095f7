"""The evaluation section is validated like the rest of the spec: every problem at once, file:line, did-you-mean."""
from __future__ import annotations

from tests.conftest import BASE_SPEC, merged  # noqa: F401  (fixtures come from tests/conftest.py)

TASK = {"name": "cap", "split": "test", "max_new_tokens": 8, "metric": "exact_match"}


def _problems(write_spec, spec_problems, evaluation: dict, expected: list | None = None):
    overrides = {"evaluation": evaluation, "data": {"test": "/data/test.jsonl", "format": "prompt_completion"}}
    if expected is not None:
        overrides["hypothesis"] = {"statement": "s", "expected": expected}
    return spec_problems(write_spec(overrides))


def test_bad_tasks_are_reported_at_their_lines(write_spec, spec_problems):
    issues = _problems(write_spec, spec_problems, {"tasks": [
        {**TASK, "metric": "exact_mtch"},
        {**TASK, "name": "rx", "metric": "regex", "pattern": "answer: \\w+"},
        {**TASK, "name": "cu", "metric": "custom", "custom": "not a target"},
        {**TASK, "name": "cap"},
    ]})
    text = "\n".join(str(i) for i in issues)
    assert "exact_mtch" in text and "'exact_match'" in text            # the literal's choices are listed
    assert "has no group" in text
    assert 'custom: "package.module:function"' in text
    assert all(i.line > 1 for i in issues)


def test_unique_names_and_select_best_by(write_spec, spec_problems):
    text = "\n".join(map(str, _problems(write_spec, spec_problems, {"tasks": [TASK, dict(TASK)]})))
    assert "task names must be unique: cap" in text
    text = "\n".join(map(str, _problems(write_spec, spec_problems,
                                        {"tasks": [TASK], "select_best_by": "eval.cap.exact_match"})))
    assert "needs `every`" in text
    text = "\n".join(map(str, _problems(write_spec, spec_problems, {"tasks": [TASK], "select_best_by": "eval.cp"})))
    assert "names no task metric" in text and "eval.cap.exact_match" in text


def test_expectations_name_a_declared_task_metric(write_spec, spec_problems):
    issues = _problems(write_spec, spec_problems, {"tasks": [TASK]},
                       [{"metric": "eval.cap.exact_matc", "comparator": ">", "target": 0.5},
                        {"metric": "eval.cap.exact_match", "comparator": ">", "target": 0.5, "vs_control": True}])
    text = "\n".join(map(str, issues))
    assert "did you mean 'eval.cap.exact_match'?" in text
    assert "vs_control compares with a control run: set evaluation.control: true" in text


def test_a_valid_section_plans_a_control_run_and_reaches_the_config(write_spec, plan_spec):
    plan = plan_spec(write_spec({"evaluation": {"control": True, "tasks": [TASK]},
                                 "data": {"test": "/data/test.jsonl", "format": "prompt_completion"},
                                 "hypothesis": {"statement": "s", "expected": [
                                     {"metric": "eval.cap.exact_match", "comparator": ">=", "target": 0.3,
                                      "vs_control": True}]}}))
    assert [(r.name, r.kind) for r in plan.runs] == [("main", "train"), ("control_1B", "control")]
    assert plan.runs[0].config["evaluation"]["tasks"][0]["name"] == "cap"
    assert plan.runs[1].config["evaluation"] == plan.runs[0].config["evaluation"]
