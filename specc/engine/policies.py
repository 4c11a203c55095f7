"""Small policy objects the training loop calls. None of them owns the loop.

Each has `state()`/`restore()` so a resumed run makes exactly the decisions the uninterrupted one
would have made.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from specc.spec.model import EarlyStopping


class MovingAverage:
    """Mean of the last `window` values (the seeds' 50-step loss average)."""

    def __init__(self, window: int = 50):
        self.values: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def value(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    def state(self) -> list[float]:
        return list(self.values)

    def restore(self, values: list[float]) -> None:
        self.values.clear()
        self.values.extend(values)


@dataclass
class Stop:
    status: str        # "early_stopped" | "diverged"
    reason: str        # a sentence a person can act on


class EarlyStopper:
    """Stops on a train-loss plateau or on repeated gradient spikes, never during warmup."""

    def __init__(self, cfg: EarlyStopping):
        self.cfg = cfg
        self.best = math.inf
        self.bad_checks = 0
        self.spikes = 0

    def after_step(self, step: int, loss_avg: float | None, grad_norm: float) -> Stop | None:
        """Call once per optimizer step (1-based `step` = steps done)."""
        c = self.cfg
        if not c.enabled or step <= c.warmup_steps:
            return None
        self.spikes = self.spikes + 1 if grad_norm > c.grad_spike_threshold else 0
        if self.spikes >= c.grad_spike_patience:
            return Stop("early_stopped", f"gradient norm above {c.grad_spike_threshold:g} for {self.spikes} "
                                         f"consecutive steps (last {grad_norm:.4g}) at step {step}")
        if step % c.check_every or loss_avg is None:
            return None
        if loss_avg < self.best - c.min_delta:
            self.best, self.bad_checks = loss_avg, 0
            return None
        self.bad_checks += 1
        if self.bad_checks >= c.patience:
            return Stop("early_stopped", f"loss plateau: the 50-step average ({loss_avg:.4f}) has not improved by "
                                         f"{c.min_delta:g} on the best ({self.best:.4f}) in {self.bad_checks} checks "
                                         f"({self.bad_checks * c.check_every} steps), at step {step}")
        return None

    def state(self) -> dict:
        return {"best": None if math.isinf(self.best) else self.best, "bad_checks": self.bad_checks, "spikes": self.spikes}

    def restore(self, s: dict) -> None:
        self.best = math.inf if s.get("best") is None else float(s["best"])
        self.bad_checks, self.spikes = int(s.get("bad_checks", 0)), int(s.get("spikes", 0))


def non_finite(loss_sum: float) -> bool:
    return not math.isfinite(loss_sum)


class MemoryWatch:
    """Flags memory that grew more than 50% over the first steady reading (a leak, usually)."""

    def __init__(self, growth: float = 0.5, settle_steps: int = 5):
        self.growth, self.settle_steps = growth, settle_steps
        self.baseline_mb: float | None = None
        self.warned = False

    def first_warning(self) -> bool:
        """True the first time it is asked (then the run log has the warning once); False after."""
        first, self.warned = not self.warned, True
        return first

    def state(self) -> dict:
        return {"baseline_mb": self.baseline_mb, "warned": self.warned}

    def restore(self, s: dict) -> None:
        self.baseline_mb, self.warned = s.get("baseline_mb"), bool(s.get("warned", False))

    def check(self, step: int, current_mb: float) -> str | None:
        if step < self.settle_steps or current_mb <= 0:
            return None
        if self.baseline_mb is None:
            self.baseline_mb = current_mb
            return None
        if current_mb > self.baseline_mb * (1 + self.growth):
            return f"memory grew {100 * (current_mb / self.baseline_mb - 1):.0f}% since step {self.settle_steps} " \
                   f"({self.baseline_mb:.0f} → {current_mb:.0f} MB)"
        return None
