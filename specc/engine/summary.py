"""summary.json: "running" while a run is in progress, then the run's result (stable layout, docs/architecture.md)."""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

from specc.engine import distributed as dist
from specc.rundir import RunDir


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half of it. NaN/inf become null."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_running(s) -> None:
    """Supersede an earlier attempt's summary.json before the first step: status "running", with the
    pid and host that `specc watch` uses to tell a live run from a killed one."""
    if not dist.world().is_main:
        return
    st = s.state
    write_json_atomic(s.run_dir / "summary.json", {
        "status": "running", "stop_reason": None, "experiment": s.cfg.experiment, "run": s.cfg.run,
        "kind": s.cfg.kind, "pid": os.getpid(), "host": socket.gethostname(), "started_at": s.started,
        "steps": st.step, "total_steps": s.total_steps, "restarts": st.restarts, "backend": s.backend.name,
        "history": st.history, "estimate": s.cfg.raw.get("estimate") or {}})


def write_summary(s, status: str, reason: str, results: dict | None = None) -> dict:
    """The run's result; `results` adds what a control run measured (val_loss, test_loss, ...)."""
    st = s.state
    mem = s.backend.memory()
    window = st.loss_window
    summary = {
        "status": status,
        "stop_reason": reason,
        "experiment": s.cfg.experiment,
        "run": s.cfg.run,
        "kind": s.cfg.kind,
        "host": socket.gethostname(),
        "steps": st.step,
        "total_steps": s.total_steps,
        "tokens": st.tokens,
        "wall_s": round(st.wall_s_before + time.time() - s.started, 3),
        "train_s": round(st.train_s, 3),
        "tokens_per_s": round(st.tokens / st.train_s, 3) if st.train_s > 0 else None,
        "peak_mem_mb": round(mem.peak_mb, 1),
        "peak_mem_source": mem.source,
        "best_val_loss": st.best_val_loss,
        "best_step": st.best_step,
        "final_loss": sum(window) / len(window) if window else None,
        "last_loss": window[-1] if window else None,
        "checkpoint_s": st.ckpt_s,
        "restarts": st.restarts,
        "history": st.history,
        "checkpoints": RunDir(s.run_dir).checkpoints(),
        "extended": any(h.get("kind") == "extend" for h in st.history),
        "backend": s.backend.name,
        "backend_reason": s.backend_reason,
        "device": s.backend.describe(),
        "data": {"dataset": s.data.dataset.to_dict(),
                 "tokenization": s.data.train_report.to_dict() if s.data.train_report else None,
                 "packing_efficiency": s.data.train_plan.packing_efficiency(0) if s.data.train_plan else None,
                 "steps_source": s.data.steps_source},
        "schedule": s.schedule.to_dict() if s.schedule else None,
        "estimate": s.cfg.raw.get("estimate") or {},
        **(results or {}),
    }
    if getattr(s, "tracker", None) is not None:   # ok, or why not (a tracker that was down never stops a run)
        summary["tracking"] = s.tracker.status()
    if dist.world().is_main:   # data-parallel: rank 0 writes the run's files
        write_json_atomic(s.run_dir / "summary.json", summary)
    return summary
