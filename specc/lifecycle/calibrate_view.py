"""What `specc calibrate` prints: the measured shapes, the warnings about them, and what --from-runs changed."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rich.table import Table

from specc.fmt import fmt_duration, markup_safe


def shared_machine_warnings(results: list) -> list[str]:
    """CPU calibrations whose steps got well under a CPU-second per second per thread: a shared machine."""
    out = []
    for r in results:
        m = r.entry["measured"]
        threads, share = m.get("threads"), m.get("cpu_share")
        if share is not None and threads and str(m.get("device")) == "cpu" and share < 0.75 * threads:
            out.append(f"{r.run}: the steps got {share:.2f} CPU-seconds per second with {threads} thread(s): the machine "
                       "is shared, and the wall times measured (and estimated) reflect its load now. Calibrate again "
                       "when it is as busy as it will be during the run.")
    return out


def _peak(mem: dict) -> str:
    """The measured peak, and on CUDA the memory model's figure beside it (specc/estimate/memory.py)."""
    text = f"{mem['peak_mb']:,.0f} MB"
    if mem.get("formula_mb"):
        text += f" (formula {mem['formula_mb']:,.0f}, {100 * mem['formula_error']:+.1f}%)"
    return text


def calibration_lines(path: Path, results: list) -> Iterator:
    t = Table(title=f"Calibration → {path}", title_justify="left")
    for c in ("run (shape)", "tokens/s", "step", "± stdev", "peak mem", "startup", "eval batch", "checkpoint", "device"):
        t.add_column(c)
    for r in results:
        e = r.entry
        o, thr = e["overheads"], e["throughput"]
        t.add_row(markup_safe(r.run), f"{thr['tokens_per_s']:,.0f}", f"{thr['step_s']:.3f} s",
                  f"{thr['step_s_stdev']:.3f} s", _peak(e["memory"]),
                  fmt_duration(o["import_s"] + o["model_load_s"] + o["data_s"]), f"{o['eval_batch_s']:.3f} s",
                  f"{o['checkpoint_s']:.2f} s", markup_safe(e["measured"]["device_text"]))
    yield t
    for w in shared_machine_warnings(results):
        yield f"[yellow]warning[/]: {markup_safe(w)}"
    yield f"commit {path}: `specc compile` and `specc plan` use it for runs of these shapes."


def fold_lines(changes: list) -> Iterator[str]:
    """Each record added, updated, unchanged or skipped, then which files changed."""
    for c in changes:
        colour = {"added": "green", "updated": "green", "unchanged": "dim", "skipped": "yellow"}[c.action]
        yield f"  [{colour}]{c.action}[/] {markup_safe(c.run)}: {markup_safe(c.detail())}"
    written = sorted({c.path.as_posix() for c in changes if c.action in ("added", "updated")})
    if written:
        yield (f"updated {', '.join(written)}: commit it; the next estimates of these shapes are corrected by the "
               "median time accuracy of their newest records (`specc compile --check` then wants a recompile).")
    else:
        yield "no calibration file changed"
