"""The progress line says only true things."""
from __future__ import annotations

import io

from rich.console import Console

from specc.engine.metrics import Progress


def _line(since_ckpt):
    buf = io.StringIO()
    p = Progress(100, Console(file=buf, highlight=False, force_terminal=False), log_every=1)
    p.step_time(0.5)
    p.update(3, 1.25, 1.5, 100.0, since_ckpt, None)
    return buf.getvalue()


def test_no_checkpoint_age_before_the_first_checkpoint():
    assert "no ckpt yet" in _line(None) and "ckpt -" not in _line(None)   # was "ckpt -3"
    assert "ckpt -3" in _line(3)
