"""Verdicts on task metrics: against the control run, and INCONCLUSIVE when the interval cannot tell."""
from __future__ import annotations

from specc.lifecycle.verdict import CONFIRMED, INCONCLUSIVE, REJECTED, judge


def summary(mean: float, low: float, high: float, kind: str = "train") -> dict:
    return {"status": "completed", "kind": kind, "steps": 100, "total_steps": 100, "best_step": 100,
            "eval": {"cap": {"exact_match": mean, "ci95": [low, high], "n": 200}}}


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
