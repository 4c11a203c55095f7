"""LR schedules are pure functions: property tests over every kind, extension and restart."""
from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from specc.plan.schedule import ScheduleSpec, extend, key_steps, lr, restart, schedule_csv

EXAMPLES = settings(max_examples=30, deadline=None)
REL = 1e-9


@st.composite
def schedules(draw, kinds=("constant", "linear", "cosine", "wsd")):
    total = draw(st.integers(2, 3000))
    return ScheduleSpec(
        kind=draw(st.sampled_from(kinds)),
        peak_lr=draw(st.floats(1e-6, 1.0)),
        warmup_steps=draw(st.integers(0, total - 1)),
        total_steps=total,
        min_lr_ratio=draw(st.floats(0.0, 1.0)),
        decay_fraction=draw(st.floats(0.01, 1.0)),
    )


def values(spec: ScheduleSpec) -> list[float]:
    return [lr(spec, s) for s in range(spec.start_step, spec.total_steps)]


def decay_steps(spec: ScheduleSpec) -> int:
    """How many steps the decay is spread over (what bounds its per-step slope)."""
    span = spec.total_steps - 1 - spec.warmup_steps
    if spec.kind == "wsd":
        return max(1, span - round(span * (1.0 - spec.decay_fraction)))
    return max(1, span)


def eps(spec) -> float:
    return spec.peak_lr * 1e-9


@EXAMPLES
@given(schedules())
def test_continuity(spec):
    """No step changes the rate by more than the steepest warmup or decay slope allows."""
    v = values(spec)
    slope = (spec.peak_lr - spec.min_lr) / decay_steps(spec) * (math.pi / 2 if spec.kind == "cosine" else 1.0)
    bound = max(spec.peak_lr / (spec.warmup_steps + 1), slope) + eps(spec)
    assert max(abs(b - a) for a, b in zip(v, v[1:])) <= bound


@EXAMPLES
@given(schedules())
def test_warmup_boundary_reaches_the_peak(spec):
    assume(0 < spec.warmup_steps < spec.total_steps - 1)
    before, at = lr(spec, spec.warmup_steps - 1), lr(spec, spec.warmup_steps)
    assert at == pytest.approx(spec.peak_lr, rel=REL)
    assert at - before == pytest.approx(spec.peak_lr / (spec.warmup_steps + 1), rel=1e-6)


@EXAMPLES
@given(schedules())
def test_warmup_is_monotone_non_decreasing(spec):
    # Through the peak at warmup_steps, unless warmup ends on the last step, which is the minimum.
    v = values(spec)[: min(spec.warmup_steps + 1, spec.total_steps - 1)]
    assert all(b >= a for a, b in zip(v, v[1:]))


@EXAMPLES
@given(schedules(kinds=("linear", "cosine", "wsd")))
def test_non_increasing_after_warmup(spec):
    v = values(spec)[spec.warmup_steps:]
    assert all(b <= a + eps(spec) for a, b in zip(v, v[1:]))


@EXAMPLES
@given(schedules(kinds=("linear", "cosine", "wsd")))
def test_last_step_is_the_minimum(spec):
    assert lr(spec, spec.total_steps - 1) == pytest.approx(spec.min_lr_ratio * spec.peak_lr, rel=REL, abs=1e-15)


@EXAMPLES
@given(schedules())
def test_values_stay_in_range(spec):
    """Warmup climbs from near zero to the peak; after it, every value is within [min_lr, peak]."""
    v = values(spec)
    assert all(0 < x <= spec.peak_lr + eps(spec) for x in v[: spec.warmup_steps])
    assert all(spec.min_lr - eps(spec) <= x <= spec.peak_lr + eps(spec) for x in v[spec.warmup_steps:])


@EXAMPLES
@given(schedules(kinds=("constant",)))
def test_constant_holds_the_peak_after_warmup(spec):
    assert set(values(spec)[spec.warmup_steps:]) == {spec.peak_lr}


@EXAMPLES
@given(schedules(), st.data())
def test_extend_continues_from_the_current_rate(spec, data):
    at = data.draw(st.integers(1, spec.total_steps + 5), label="at_step")
    new_total = data.draw(st.integers(at + 2, at + 3000), label="new_total")
    decay = data.draw(st.sampled_from([None, "linear", "cosine"]), label="decay")
    ext = extend(spec, at_step=at, new_total=new_total, decay=decay)
    current = lr(spec, min(at, spec.total_steps - 1))
    assert ext.start_step == at and ext.start_lr == current
    assert lr(ext, at) == pytest.approx(current, rel=REL)   # continuity at the resume step
    assert lr(ext, new_total - 1) == pytest.approx(spec.min_lr, rel=REL, abs=1e-15)
    v = values(ext)
    # Monotone from the current rate to the minimum: down, or up when it stopped early in warmup.
    sign = 1 if current >= spec.min_lr else -1
    assert all(sign * (b - a) <= eps(spec) for a, b in zip(v, v[1:]))
    lo, hi = sorted((current, spec.min_lr))
    assert all(lo - eps(spec) <= x <= hi + eps(spec) for x in v)
    slope = abs(current - spec.min_lr) / (new_total - 1 - at) * math.pi / 2
    assert max(abs(b - a) for a, b in zip(v, v[1:])) <= slope + eps(spec)
    with pytest.raises(ValueError):
        lr(ext, at - 1)


def test_seeds_continuation_plan():
    """A constant 1e-3 run stopped at 1,000 steps, extended to 10,000 with a cosine to 10% of the peak."""
    old = ScheduleSpec("constant", 1e-3, 0, 1000, min_lr_ratio=0.1)
    ext = extend(old, at_step=1000, new_total=10000, decay="cosine")
    assert lr(ext, 1000) == pytest.approx(1e-3, rel=REL)
    assert lr(ext, 9999) == pytest.approx(1e-4, rel=REL)
    assert lr(ext, 5500) == pytest.approx(5.5e-4, rel=1e-3)   # halfway down the cosine
    assert ext.kind == "cosine" and ext.total_steps == 10000


def test_extend_needs_a_later_total():
    with pytest.raises(ValueError):
        extend(ScheduleSpec("cosine", 1e-3, 0, 100), at_step=100, new_total=100)


@EXAMPLES
@given(schedules(), st.integers(2, 3000))
def test_restart_is_a_fresh_schedule(spec, total):
    assume(spec.warmup_steps < total)
    ext = extend(spec, at_step=1, new_total=spec.total_steps + 10)
    fresh = restart(ext, total)
    assert fresh == ScheduleSpec(ext.kind, spec.peak_lr, spec.warmup_steps, total, spec.min_lr_ratio, spec.decay_fraction)
    assert lr(fresh, 0) == pytest.approx(spec.peak_lr / (spec.warmup_steps + 1), rel=REL)


@pytest.mark.parametrize("kwargs", [
    {"total_steps": 0}, {"warmup_steps": 10, "total_steps": 10}, {"start_step": 5},
    {"start_step": 100, "start_lr": 1e-3},
])
def test_invalid_specs(kwargs):
    args = {"kind": "cosine", "peak_lr": 1e-3, "warmup_steps": 0, "total_steps": 100, **kwargs}
    with pytest.raises(ValueError):
        ScheduleSpec(**args)


def test_steps_outside_the_schedule():
    spec = ScheduleSpec("cosine", 1e-3, 10, 100)
    for step in (-1, 100):
        with pytest.raises(ValueError):
            lr(spec, step)


@EXAMPLES
@given(schedules())
def test_key_steps_and_csv(spec):
    steps = key_steps(spec)
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == spec.total_steps - 1
    if 0 < spec.warmup_steps:
        assert {spec.warmup_steps - 1, spec.warmup_steps} <= set(steps)
    rows = schedule_csv(spec).splitlines()
    assert rows[0] == "step,lr" and len(rows) == len(steps) + 1
    for row, step in zip(rows[1:], steps):
        s, value = row.split(",")
        assert int(s) == step and float(value) == pytest.approx(lr(spec, step), rel=1e-6)


def test_to_dict_round_trips():
    spec = extend(ScheduleSpec("wsd", 1e-3, 5, 50), at_step=20, new_total=80)
    assert ScheduleSpec(**spec.to_dict()) == spec
