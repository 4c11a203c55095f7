"""Which runs `specc submit --unfinished` submits again, from a run's summary and its last job's SLURM state."""
from __future__ import annotations

import pytest

from specc.slurm.unfinished import classify, newest_checkpoint
from specc.slurm.usage import Usage, suggest_time


@pytest.mark.parametrize("summary, state, resubmit, why", [
    ({"status": "completed", "steps": 8}, "COMPLETED", False, "completed (8 steps)"),
    ({"status": "early_stopped", "steps": 5}, None, False, "early_stopped (5 steps)"),
    ({"status": "diverged", "stop_reason": "loss is nan"}, "FAILED", False, "diverged: loss is nan"),
    ({"status": "failed", "stop_reason": "bad data"}, "FAILED", False, "failed: bad data; fix that first"),
    ({"status": "failed", "stop_reason": "lost", "steps": 3}, "NODE_FAIL", True, "failed on a node at step 3"),
    ({"status": "interrupted", "steps": 30, "stop_reason": "SIGTERM received"}, "TIMEOUT", True, "timed out at step 30"),
    ({"status": "interrupted", "steps": 30, "stop_reason": "SIGUSR1 received"}, "FAILED", True, "interrupted at step 30"),
    ({"status": "running", "steps": 10}, "TIMEOUT", True, "timed out at step 10"),
    ({"status": "running", "steps": 10}, "CANCELLED", True, "cancelled at step 10"),
    ({"status": "running", "steps": 10}, "OUT_OF_MEMORY", False, "out of memory at step 10"),
    (None, "CANCELLED", True, "never started (job CANCELLED)"),
    (None, None, True, "never started"),
])
def test_classify(summary, state, resubmit, why):
    ok, text = classify(summary, state, checkpoint=20 if summary else None)
    assert ok is resubmit and text.startswith(why), text
    if ok and summary:
        assert text.endswith("resumes from step 20")


def test_the_newest_checkpoint_is_the_newest_committed_one(tmp_path):
    for step, committed in ((10, True), (20, True), (30, False)):
        d = tmp_path / "checkpoints" / f"step_{step:07d}"
        d.mkdir(parents=True)
        if committed:
            (d / "manifest.json").write_text("{}")
    assert newest_checkpoint(tmp_path) == 20 and newest_checkpoint(tmp_path / "none") is None


def test_used_against_asked_and_the_suggested_time():
    u = Usage(asked_s=3600, used_s=5400.0, gpus=2, source="sacct", finished=True)
    assert (u.ratio, u.asked_gpu_h, u.used_gpu_h) == (1.5, 2.0, 3.0)
    assert suggest_time(u) == "01:50:00"                    # 5400 × 1.1 + 600 = 6540 s, up to 5 min
    assert suggest_time(Usage(3600, 100.0, 0, "run clock", finished=False)) is None
