"""Which finished runs measured what they were planned to do: only those are evidence (a prior for
`specc plan`, a time accuracy for `specc report` and `specc calibrate --from-runs`)."""
from __future__ import annotations

from specc.rundir import FINISHED


def was_extended(summary: dict, config: dict | None = None) -> bool:
    """Did the run train past the steps it was planned (and estimated) for (--extend-steps, continuation
    strategy extend)? From summary.json's history; an old summary without one is extended when its
    total_steps differs from the config's."""
    if summary.get("extended"):
        return True
    history = summary.get("history")
    if isinstance(history, list) and any(isinstance(h, dict) and h.get("kind") == "extend" for h in history):
        return True
    if "history" in summary or "extended" in summary:
        return False
    planned = ((config or {}).get("training") or {}).get("total_steps")
    total = summary.get("total_steps")
    return planned is not None and total is not None and int(total) != int(planned)


def _extension_text(summary: dict, config: dict | None) -> str:
    ext = [h for h in summary.get("history") or [] if isinstance(h, dict) and h.get("kind") == "extend"]
    if ext:
        return f"extended at step {ext[0].get('step')} to {ext[-1].get('total_steps')} steps"
    planned = ((config or {}).get("training") or {}).get("total_steps")
    return f"extended: it ran to {summary.get('total_steps')} steps, planned for {planned}"


def measurement_problem(summary: dict | None, config: dict | None = None) -> str | None:
    """Why a run's measured time and speed must not be used as evidence (a prior, a time accuracy); None
    when they may. Only runs that completed or early-stopped without an extension measured the run they
    were planned as: an interrupted run stopped part-way, a failed or diverged one broke off, and an
    extended one trained more steps than estimated, its wall time including the earlier attempt's."""
    if not summary:
        return "no summary.json: still running, or killed before it finished"
    status = summary.get("status")
    if status not in FINISHED:
        return f"it did not finish (status {status or 'unknown'})"
    if was_extended(summary, config):
        return f"it was {_extension_text(summary, config)}: its times cover more steps than were planned and estimated"
    return None
