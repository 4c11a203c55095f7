"""Verdict logic: each comparator, tolerance edges, relative tolerance, baselines, missing evidence."""
from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from specc.lifecycle.verdict import (
    CONFIRMED,
    INCONCLUSIVE,
    REJECTED,
    compare,
    judge,
    metric_value,
    overall,
    slack,
)

FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
TOL = st.floats(min_value=0, max_value=1e3, allow_nan=False, allow_infinity=False)
COMPARATORS = ["<", "<=", ">", ">=", "==", "within"]


def summary(**metrics):
    return {"status": "completed", "kind": "train", "steps": 100, "total_steps": 100, "best_step": 100, **metrics}


def exp(metric="val_loss", comparator="<", target=1.0, **kw):
    return {"metric": metric, "comparator": comparator, "target": target, **kw}


@settings(max_examples=200, deadline=None)
@given(value=FINITE, target=FINITE, tol=TOL, relative=st.booleans(), comparator=st.sampled_from(COMPARATORS))
def test_compare_matches_the_documented_rule(value, target, tol, relative, comparator):
    s = tol * abs(target) if relative else tol
    expected = {"<": value < target + s, "<=": value <= target + s, ">": value > target - s,
                ">=": value >= target - s, "==": abs(value - target) <= s, "within": abs(value - target) <= s}[comparator]
    assert compare(value, comparator, target, tol, relative) is expected


@settings(max_examples=200, deadline=None)
@given(target=FINITE, tol=TOL, relative=st.booleans())
def test_tolerance_edges(target, tol, relative):
    """At the slackened bound: inclusive comparators hold, strict ones do not."""
    s = slack(target, tol, relative)
    upper, lower = target + s, target - s
    assume(math.isfinite(upper) and math.isfinite(lower))
    assert compare(upper, "<=", target, tol, relative) and not compare(upper, "<", target, tol, relative)
    assert compare(lower, ">=", target, tol, relative) and not compare(lower, ">", target, tol, relative)
    # Just past the bound, everything flips.
    above, below = math.nextafter(upper, math.inf), math.nextafter(lower, -math.inf)
    assert not compare(above, "<=", target, tol, relative)
    assert not compare(below, ">=", target, tol, relative)
    for c in ("==", "within"):
        assert compare(target, c, target, tol, relative)
        for edge in (upper, lower):   # the band's edges are in it (when exact in floating point)
            if abs(edge - target) <= s:
                assert compare(edge, c, target, tol, relative)
        for past in (above, below):
            if abs(past - target) > s:
                assert not compare(past, c, target, tol, relative)


@settings(max_examples=100, deadline=None)
@given(target=st.floats(min_value=0.01, max_value=1e4), frac=st.floats(min_value=0, max_value=0.5),
       inside=st.floats(min_value=0, max_value=0.999))
def test_relative_tolerance_is_a_fraction_of_the_target(target, frac, inside):
    value = target * (1 + frac * inside)
    assert compare(value, "within", target, frac, relative=True)
    assert compare(target * (1 - frac * inside), "within", target, frac, relative=True)
    if frac > 0:
        assert not compare(target * (1 + frac) * 1.001 + 1e-9, "within", target, frac, relative=True)


@settings(max_examples=100, deadline=None)
@given(value=FINITE, target=FINITE, comparator=st.sampled_from(COMPARATORS))
def test_judge_agrees_with_compare(value, target, comparator):
    v = judge(exp("final_loss", comparator, target), summary(final_loss=value))
    assert v.verdict == (CONFIRMED if compare(value, comparator, target) else REJECTED)
    assert v.measured == value


@settings(max_examples=100, deadline=None)
@given(metric=st.sampled_from(["val_loss", "final_loss", "best_val_loss", "tokens_per_s", "wall_hours",
                               "peak_mem_gb", "my_custom_metric"]), comparator=st.sampled_from(COMPARATORS))
def test_missing_metric_is_inconclusive(metric, comparator):
    v = judge(exp(metric, comparator, 1.0), summary())
    assert v.verdict == INCONCLUSIVE and "not in" in v.reason


@pytest.mark.parametrize("status", ["diverged", "interrupted", "failed"])
def test_unfinished_runs_are_inconclusive(status):
    s = summary(final_loss=0.1, status=status, stop_reason="why")
    assert judge(exp("final_loss", "<", 1.0), s).verdict == INCONCLUSIVE
    assert judge(exp("final_loss", "<", 1.0), None).verdict == INCONCLUSIVE


def test_early_stopped_before_eval_and_too_few_steps():
    s = summary(status="early_stopped", best_step=None, steps=60, total_steps=100, best_val_loss=0.3, final_loss=0.3)
    assert judge(exp("best_val_loss", "<", 1.0), s).verdict == INCONCLUSIVE
    assert judge(exp("final_loss", "<", 1.0), s).verdict == CONFIRMED      # train metrics are still measured
    few = summary(status="early_stopped", steps=5, total_steps=1000, final_loss=0.1)
    v = judge(exp("final_loss", "<", 1.0), few)
    assert v.verdict == INCONCLUSIVE and "too few steps" in v.reason
    assert judge(exp("final_loss", "<", 1.0), summary(steps=0, final_loss=0.1)).verdict == INCONCLUSIVE


@settings(max_examples=100, deadline=None)
@given(run=st.floats(min_value=0.01, max_value=100), base=st.floats(min_value=0.01, max_value=100),
       target=st.floats(min_value=0.1, max_value=10), tol=st.floats(min_value=0, max_value=0.5),
       comparator=st.sampled_from(COMPARATORS))
def test_vs_baseline_compares_the_ratio(run, base, target, tol, comparator):
    e = exp("final_loss", comparator, target, tolerance=tol, relative=True, vs_baseline=True)
    v = judge(e, summary(final_loss=run), baseline_summary=summary(final_loss=base))
    assert v.value == pytest.approx(run / base)
    assert v.verdict == (CONFIRMED if compare(run / base, comparator, target, tol, True) else REJECTED)
    assert v.baseline == base


def test_vs_baseline_without_a_baseline_is_inconclusive():
    e = exp("final_loss", "<", 1.0, vs_baseline=True)
    assert judge(e, summary(final_loss=1.0)).verdict == INCONCLUSIVE
    assert judge(e, summary(final_loss=1.0), baseline_summary=summary()).verdict == INCONCLUSIVE
    assert judge(e, summary(final_loss=1.0), baseline_summary=summary(final_loss=0.0)).verdict == INCONCLUSIVE
    running = {"status": "interrupted", "final_loss": 1.0, "steps": 10, "total_steps": 100}
    assert judge(e, summary(final_loss=1.0), baseline_summary=running).verdict == INCONCLUSIVE


def test_derived_and_custom_metrics():
    s = summary(wall_s=7200, peak_mem_mb=2048, data={"packing_efficiency": 0.75}, best_val_loss=0.4)
    assert metric_value(s, "wall_hours") == 2.0
    assert metric_value(s, "peak_mem_gb") == 2.0
    assert metric_value(s, "data.packing_efficiency") == 0.75
    assert metric_value(s, "val_loss", [{"step": 0, "val_loss": 2.0}, {"step": 10, "val_loss": 0.5}]) == 0.5
    assert metric_value({"x": float("nan")}, "x") is None and metric_value({"x": True}, "x") is None


def test_seeds_larger_batch_expectations():
    """final loss within 5% of the baseline, time at most half (±0.1) of it."""
    loss = exp("final_loss", "within", 1.0, tolerance=0.05, relative=True, vs_baseline=True)
    hours = exp("wall_hours", "<=", 0.5, tolerance=0.1, vs_baseline=True)
    base = summary(final_loss=0.45, wall_s=24 * 3600)
    assert judge(loss, summary(final_loss=0.47), baseline_summary=base).verdict == CONFIRMED
    assert judge(loss, summary(final_loss=0.48), baseline_summary=base).verdict == REJECTED
    assert judge(hours, summary(wall_s=14 * 3600), baseline_summary=base).verdict == CONFIRMED   # 0.58 ≤ 0.6
    assert judge(hours, summary(wall_s=15 * 3600), baseline_summary=base).verdict == REJECTED    # 0.625


def test_overall():
    from specc.lifecycle.verdict import Verdict

    def verdict_of(kind):
        return Verdict("m", "<", 1, 0, False, False, kind)

    assert overall([verdict_of(CONFIRMED), verdict_of(CONFIRMED)]) == CONFIRMED
    assert overall([verdict_of(CONFIRMED), verdict_of(INCONCLUSIVE)]) == INCONCLUSIVE
    assert overall([verdict_of(INCONCLUSIVE), verdict_of(REJECTED)]) == REJECTED
    assert overall([]) == INCONCLUSIVE
