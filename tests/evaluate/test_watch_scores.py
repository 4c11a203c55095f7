"""`specc watch` shows the latest task score: the in-training one while a run trains, the final one after."""
from __future__ import annotations

import os
import time

from specc.lifecycle.watch import describe, snapshot
from tests.lifecycle.run_files import step_records, write_run


def test_watch_shows_the_latest_in_training_task_score(tmp_path):
    records = step_records(40)
    records.insert(21, {"step": 20, "eval.cap.exact_match": 0.25, "eval_n": 16, "t": time.time()})
    records.append({"step": 40, "eval.cap.exact_match": 0.5625, "eval_n": 16, "t": time.time()})
    run = write_run(tmp_path, "exp", "main", records=records,
                    summary={"status": "running", "pid": os.getpid(), "host": os.uname().nodename, "steps": 0,
                             "started_at": time.time() - 5})
    lines = describe(snapshot(run))
    assert "eval.cap.exact_match 0.562 (step 40)" in lines[0]


def test_after_training_watch_shows_the_scored_result(tmp_path):
    run = write_run(tmp_path, "exp", "main", records=step_records(100),
                    summary={"eval": {"cap": {"exact_match": 0.91, "ci95": [0.86, 0.94], "n": 200}}})
    assert "eval.cap.exact_match 0.910" in describe(snapshot(run))[0]
