"""Verdicts on task metrics: against the control run, and INCONCLUSIVE when the interval cannot tell."""
from __future__ import annotations

from specc.lifecycle.verdict import CONFIRMED, INCONCLUSIVE, REJECTED, judge


def summary(mean: float, low: float, high: float, kind: str = "train", method: str = "wilson") -> dict:
    return {"status": "completed", "kind": kind, "steps": 100, "total_steps": 100, "best_step": 100,
            "eval": {"cap": {"exact_match": mean, "ci95": [low, high], "n": 200, "ci_method": method}}}


GAIN = {"metric": "eval.cap.exact_match", "comparator": ">=", "target": 0.3, "vs_control": True}


def test_a_clear_gain_over_the_control_is_confirmed():
    v = judge(GAIN, summary(0.9, 0.85, 0.94), control_summary=summary(0.1, 0.07, 0.15, "control"))
    assert v.verdict == CONFIRMED and v.value == 0.8 and v.baseline == 0.1
    assert v.interval[0] < 0.8 < v.interval[1] and "difference 0.8" in v.reason


def test_a_gain_whose_interval_reaches_across_the_bound_is_inconclusive():
    v = judge(GAIN, summary(0.45, 0.30, 0.60), control_summary=summary(0.12, 0.05, 0.22, "control"))
    assert v.verdict == INCONCLUSIVE and "cannot tell" in v.reason and "score more examples" in v.reason


def test_a_clear_miss_is_rejected_and_a_missing_control_is_inconclusive():
    v = judge(GAIN, summary(0.2, 0.15, 0.25), control_summary=summary(0.1, 0.06, 0.14, "control"))
    assert v.verdict == REJECTED
    v = judge(GAIN, summary(0.9, 0.85, 0.94))
    assert v.verdict == INCONCLUSIVE and "no finished control run" in v.reason


def test_a_plain_task_metric_uses_its_own_interval():
    e = {"metric": "eval.cap.exact_match", "comparator": ">", "target": 0.5}
    assert judge(e, summary(0.7, 0.62, 0.77)).verdict == CONFIRMED
    assert judge(e, summary(0.55, 0.45, 0.64)).verdict == INCONCLUSIVE
    assert judge(e, summary(0.3, 0.24, 0.37)).verdict == REJECTED


def test_all_right_against_all_wrong_claims_no_more_than_a_difference_of_one():
    """The quickstart's case: 200/200 vs 0/200; the interval of a difference of proportions ends at 1."""
    v = judge(GAIN, summary(1.0, 0.981, 1.0), control_summary=summary(0.0, 0.0, 0.019, "control"))
    assert v.verdict == CONFIRMED and v.interval[1] == 1.0 and 0.97 < v.interval[0] < 1.0
    v = judge(GAIN, summary(1.0, 0.981, 1.0, method="normal"), control_summary=summary(0.0, 0.0, 0.019, "control"))
    assert v.interval[1] > 1.0      # a continuous metric is not bounded by the rule
