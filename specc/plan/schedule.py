"""Learning-rate schedules: pure functions of a frozen ScheduleSpec, shared by every backend.

Convention: `lr(spec, step)` is the rate for optimizer step `step` (0-based, 0 ≤ step < total).
Warmup rises linearly to the peak, reached at `warmup_steps`; decay reaches exactly
`min_lr_ratio * peak` at the last step, total_steps - 1.

The seeds' formula called "cosine" (max(0.1, (T - s) / (T - w))) is linear: specc offers both
shapes, named for what they are.

Resume-and-extend (the seeds' strategy A) is a spec with `start_step > 0`: from `start_step` the
rate decays from `start_lr` (whatever the old schedule gave there) to the minimum at the new
total. Strategy B (restart from old weights) is just a fresh schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Literal

Kind = Literal["constant", "linear", "cosine", "wsd"]


@dataclass(frozen=True)
class ScheduleSpec:
    kind: Kind
    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2       # wsd: share of post-warmup steps spent decaying
    start_step: int = 0               # > 0: an extension that starts here
    start_lr: float | None = None     # the rate at start_step (extensions only)

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError("total_steps must be ≥ 1")
        if self.warmup_steps >= self.total_steps and self.start_step == 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < total_steps ({self.total_steps})")
        if not 0 <= self.start_step < self.total_steps:
            raise ValueError(f"start_step ({self.start_step}) must be in [0, total_steps={self.total_steps})")
        if self.start_step and self.start_lr is None:
            raise ValueError("an extended schedule needs start_lr")

    @property
    def min_lr(self) -> float:
        return self.peak_lr * self.min_lr_ratio

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in _FIELDS}   # all scalars: no need for asdict's deep copy


_FIELDS = tuple(f.name for f in fields(ScheduleSpec))


def _decay(kind: str, hi: float, lo: float, p: float) -> float:
    """From hi (p=0) to lo (p=1); both ends exact, so a continuation starts on the very same rate."""
    if p <= 0.0:
        return hi
    if p >= 1.0:
        return lo
    return lo + (hi - lo) * _shape(kind, p)


def _shape(kind: str, p: float) -> float:
    """Decay factor from 1 (p=0) to 0 (p=1)."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0 - p


def lr(spec: ScheduleSpec, step: int) -> float:
    """The learning rate for optimizer step `step`."""
    if not 0 <= step < spec.total_steps:
        raise ValueError(f"step {step} outside [0, {spec.total_steps})")
    lo = spec.min_lr
    last = spec.total_steps - 1
    if spec.start_step:
        if step < spec.start_step:
            raise ValueError(f"step {step} precedes the extension start {spec.start_step}")
        span = last - spec.start_step
        p = 1.0 if span == 0 else (step - spec.start_step) / span
        kind = "linear" if spec.kind == "linear" else "cosine"
        return _decay(kind, spec.start_lr, lo, p)
    if step < spec.warmup_steps:
        return spec.peak_lr * (step + 1) / (spec.warmup_steps + 1)
    if spec.kind == "constant":
        return spec.peak_lr
    span = last - spec.warmup_steps
    if span <= 0:   # warmup ends on the last step: the last step is still the minimum
        return lo
    if spec.kind == "wsd":
        # At least one decay step, or a short run would end at the peak instead of the minimum.
        decay_start = min(last - 1, spec.warmup_steps + round(span * (1.0 - spec.decay_fraction)))
        if step <= decay_start:
            return spec.peak_lr
        p = (step - decay_start) / max(1, last - decay_start)
        return _decay("linear", spec.peak_lr, lo, p)
    p = (step - spec.warmup_steps) / span
    return _decay(spec.kind, spec.peak_lr, lo, p)


def extend(spec: ScheduleSpec, at_step: int, new_total: int, decay: Kind | None = None) -> ScheduleSpec:
    """Strategy A: continue from `at_step` with a new total, decaying from the current rate to the minimum."""
    if new_total <= at_step:
        raise ValueError(f"the new total ({new_total}) must exceed the resume step ({at_step})")
    # Resuming after a finished run asks for the step past the old end: carry on from its last rate.
    current = lr(spec, min(at_step, spec.total_steps - 1))
    kind = decay or ("cosine" if spec.kind in ("constant", "wsd") else spec.kind)
    return replace(spec, kind=kind, total_steps=new_total, start_step=at_step, start_lr=current)


def restart(spec: ScheduleSpec, total_steps: int | None = None) -> ScheduleSpec:
    """Strategy B: a fresh schedule (the caller starts from old weights)."""
    return replace(spec, total_steps=total_steps or spec.total_steps, start_step=0, start_lr=None)


def key_steps(spec: ScheduleSpec, points: int = 20) -> list[int]:
    """Steps worth showing a reviewer: the ends, warmup edges, decay start and evenly spaced points."""
    last = spec.total_steps - 1
    first = spec.start_step
    steps = {first, last}
    if not spec.start_step and spec.warmup_steps:
        steps |= {spec.warmup_steps - 1, min(spec.warmup_steps, last)}
    if spec.kind == "wsd" and not spec.start_step and last > spec.warmup_steps:
        span = last - spec.warmup_steps
        steps.add(min(last - 1, spec.warmup_steps + round(span * (1.0 - spec.decay_fraction))))
    if last > first:
        steps |= {first + round((last - first) * i / points) for i in range(points + 1)}
    return sorted(s for s in steps if first <= s <= last)


@lru_cache(maxsize=256)   # a sweep over ranks or models repeats a handful of schedules many times
def schedule_csv(spec: ScheduleSpec) -> str:
    """The schedule as a small, reviewable CSV (step,lr) at its key steps."""
    rows = ["step,lr"] + [f"{s},{lr(spec, s):.6e}" for s in key_steps(spec)]
    return "\n".join(rows) + "\n"
