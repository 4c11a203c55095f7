"""The metrics an expected outcome can name: keys of a run's summary.json, and two derived ones.

A misspelt metric (best_val_los) would make every verdict INCONCLUSIVE ("the run has no such
metric") after the compute is spent; the spec rejects it at check time with a did-you-mean.
"""
from __future__ import annotations

import difflib

METRICS = {
    "best_val_loss": "lowest validation loss over the run's evaluations",
    "val_loss": "validation loss of the last evaluation",
    "final_loss": "mean training loss of the last 50 steps",
    "last_loss": "training loss of the last step",
    "test_loss": "loss on the test split (control runs)",
    "tokens_per_s": "training throughput, tokens per second of step time",
    "wall_hours": "wall-clock hours of the run, all restarts included",
    "wall_s": "wall-clock seconds of the run",
    "train_s": "seconds spent in training steps",
    "peak_mem_gb": "peak memory in GB",
    "peak_mem_mb": "peak memory in MB",
    "steps": "optimizer steps done",
    "tokens": "tokens trained on",
    "best_step": "step of the best validation loss",
    "restarts": "times the run was resumed",
    "checkpoint_s": "seconds the last checkpoint took",
}
# Families whose members are named at run time: task scores (eval.<task>.<metric>) and data facts.
PREFIXES = ("eval.", "data.")


def unknown_metric(name: str) -> str | None:
    """None when `name` is a metric an expectation may name, else the message (with a did-you-mean)."""
    if name in METRICS or name.startswith(PREFIXES):
        return None
    close = difflib.get_close_matches(name, list(METRICS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown metric {name!r}{hint} (known: {', '.join(sorted(METRICS))}, or eval.<task>.<metric>)"
