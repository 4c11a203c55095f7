"""The gate between a run's test stage and its full run.

The full run may start only if the test stage (runs/<exp>/<run>.test/) finished (completed or
early-stopped), its training loss is finite and falling (the mean of the last third of its steps is
below the mean of the first third) and throughput was measured (tokens_per_s > 0). The verdict is
written to <run>.test/gate.json, which `specc status` quotes when a full run was blocked.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from specc.rundir import FINISHED, RunDir, is_step_line, iter_jsonl, read_json
from specc.slurm.state import now

MIN_STEPS = 3          # fewer loss values cannot show a trend


@dataclass
class GateVerdict:
    ok: bool
    test_dir: str
    reasons: list[str] = field(default_factory=list)     # why it refused (empty when ok)
    facts: dict = field(default_factory=dict)            # what it measured
    checked_at: str = ""

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def read_losses(metrics: Path) -> list[tuple[int, float | None]]:
    """(step, loss) of every training-step line of a metrics.jsonl (None where the loss was not finite);
    torn lines are skipped."""
    steps = []
    for rec in filter(is_step_line, iter_jsonl(metrics)):
        loss = rec["loss"]
        steps.append((int(rec.get("step", 0)), float(loss) if isinstance(loss, (int, float)) else None))
    return steps


def check_test_stage(test_dir: Path) -> GateVerdict:
    """Judge a finished test stage; never raises for a missing or broken run directory (it refuses instead)."""
    rd = RunDir(Path(test_dir))
    v = GateVerdict(ok=False, test_dir=str(rd.path), checked_at=now())
    if not rd.summary_path.is_file():
        v.reasons.append(f"the test stage has not finished: no {rd.summary_path}")
        return v
    summary = rd.summary()
    if summary is None:
        v.reasons.append(f"cannot read {rd.summary_path}: not a JSON object")
        return v
    status = summary.get("status")
    v.facts.update(status=status, steps=summary.get("steps"), tokens_per_s=summary.get("tokens_per_s"))
    if status not in FINISHED:
        v.reasons.append(f"the test stage {status}: {summary.get('stop_reason', 'no reason recorded')}")
    losses = read_losses(rd.metrics_path)
    # A resumed test keeps one line per step; keep the last value for a step, in step order.
    by_step = dict(losses)
    values = [by_step[s] for s in sorted(by_step)]
    v.facts["loss_steps"] = len(values)
    bad = [s for s in sorted(by_step) if by_step[s] is None or not math.isfinite(by_step[s])]
    if bad:
        v.reasons.append(f"the training loss is not finite at step {bad[0]}"
                         + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    elif len(values) < MIN_STEPS:
        v.reasons.append(f"only {len(values)} training step(s) logged in metrics.jsonl; at least {MIN_STEPS} are "
                         f"needed to see the loss fall (raise stages.test.max_steps)")
    else:
        third = max(1, len(values) // 3)
        first, last = sum(values[:third]) / third, sum(values[-third:]) / third
        v.facts.update(first_third_loss=round(first, 6), last_third_loss=round(last, 6))
        if not last < first:
            v.reasons.append(f"the training loss did not fall: mean of the last third {last:.4f} ≥ mean of the "
                             f"first third {first:.4f} over {len(values)} steps")
    tps = summary.get("tokens_per_s")
    if not (isinstance(tps, (int, float)) and tps > 0):
        v.reasons.append(f"throughput was not measured (tokens_per_s = {tps})")
    v.ok = not v.reasons
    return v


def write_verdict(v: GateVerdict) -> Path:
    path = RunDir(Path(v.test_dir)).gate_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".gate.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(asdict(v), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_verdict(test_dir: Path) -> dict | None:
    """<run>.test/gate.json, or None when there is none (or it is unreadable)."""
    return read_json(RunDir(Path(test_dir)).gate_path)
