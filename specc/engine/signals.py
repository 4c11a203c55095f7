"""Preemption and Ctrl-C during training: a signal asks for a checkpoint at the next step boundary.

SLURM sends SIGTERM (or the job's --signal, SIGUSR1) before it stops a job; the loop checkpoints and
exits 75 so the job script can requeue. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal


class SignalGuard:
    """SIGTERM/SIGUSR1 (and SIGINT interactively) ask for a checkpoint at the next step boundary."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt   # a second Ctrl-C means: stop now
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
