"""A backend wrapper that injects numeric faults a healthy backend never produces on its own.

`FaultyBackend(inner, nan_loss_at=k)` reports a NaN loss for optimizer step k (1-based); with
`nan_grad_at=k` it runs the real forward/backward of step k with scale NaN, so the gradients are NaN
and the backend itself must refuse the update (StepResult.applied=False). It also snapshots the
adapter weights the moment step k begins, i.e. the weights after step k-1.

Everything else is delegated to the real backend, so the engine sees a normal backend.
"""
from __future__ import annotations

import numpy as np


class FaultyBackend:
    def __init__(self, inner, *, nan_loss_at: int | None = None, nan_grad_at: int | None = None):
        self.inner = inner
        self.name = inner.name
        self.nan_loss_at, self.nan_grad_at = nan_loss_at, nan_grad_at
        self.steps_done = 0                 # optimizer steps applied through this wrapper (fresh runs only)
        self.before_fault: dict[str, np.ndarray] | None = None
        self.applied: list[bool] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward_backward(self, batch, scale):
        step = self.steps_done + 1
        if step in (self.nan_loss_at, self.nan_grad_at) and self.before_fault is None:
            self.before_fault = {k: v.copy() for k, v in self.inner.state().items() if k.startswith("adapter/")}
        if step == self.nan_grad_at:
            loss, n = self.inner.forward_backward(batch, float("nan"))
            return loss, n
        loss, n = self.inner.forward_backward(batch, scale)
        return (float("nan"), n) if step == self.nan_loss_at else (loss, n)

    def optimizer_step(self, lr):
        result = self.inner.optimizer_step(lr)
        self.applied.append(result.applied)
        if result.applied:
            self.steps_done += 1
        return result


def install(inject: dict) -> None:
    """In a forked `specc` child: wrap whatever backend the session builds."""
    from specc.engine import session

    real = session.load_backend

    def load_backend(name):
        return FaultyBackend(real(name), **inject)

    session.load_backend = load_backend
