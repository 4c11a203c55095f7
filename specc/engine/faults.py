"""Fault injection for the crash tests: SPECC_FAULT="<action>@<point>:<step>" acts when the engine gets there.

    SPECC_FAULT=kill@save:7      SIGKILL this process halfway through writing checkpoint 7
    SPECC_FAULT=term@micro:5     send ourselves SIGTERM between the micro-batches of step 5

action: kill (SIGKILL) or a signal name (term, usr1, int, ...). Points (step = the 1-based optimizer step):
  micro  between two micro-batches of step N (needs grad_accum > 1)
  step   after step N's metrics line, before its evaluation and checkpoint
  best   inside the best/ publish after the evaluation at step N (files written, not yet swapped in)
  save   inside checkpoint N's write (state and adapter in the temporary directory, no manifest yet)
  final  inside the final adapter/ publish at step N

SPECC_SLOW_STEPS=<seconds> makes every step that long at least (a sleep after its metrics line), so a
signal sent from outside lands mid-run even where a tiny model trains 40 steps in a fraction of a second.

The variables are read once per process (a forked child reads them again); unset, a call costs a getpid()
and a dict lookup.
"""
from __future__ import annotations

import os
import signal
import time

_plan: dict[int, tuple[str, str, int] | None] = {}   # pid → (action, point, step), parsed on first use
_slow: dict[int, float] = {}                         # pid → SPECC_SLOW_STEPS


def _parse(text: str) -> tuple[str, str, int] | None:
    action, _, where = text.strip().partition("@")
    point, _, step = where.partition(":")
    if not (action and point and step.isdigit()):
        raise ValueError(f"SPECC_FAULT={text!r}: expected <action>@<point>:<step>, e.g. kill@save:7")
    return action.lower(), point, int(step)


def fault_point(point: str, step: int) -> None:
    pid = os.getpid()
    if pid not in _plan:
        text = os.environ.get("SPECC_FAULT")
        _plan[pid] = _parse(text) if text else None
    if point == "step":
        if pid not in _slow:
            _slow[pid] = float(os.environ.get("SPECC_SLOW_STEPS") or 0)
        if _slow[pid]:
            time.sleep(_slow[pid])
    plan = _plan[pid]
    if plan is None or plan[1] != point or plan[2] != step:
        return
    action = plan[0]
    sig = signal.SIGKILL if action == "kill" else getattr(signal, "SIG" + action.upper().removeprefix("SIG"))
    os.kill(pid, sig)
