"""plan.md's "## Estimates" section: every number with its source (from config.json's `estimate` blocks)."""
from __future__ import annotations

from specc.estimate.fit import gpu_hours
from specc.fmt import fmt_count, fmt_duration

NOT_ESTIMATED = ("Not estimated: no calibration or prior run of this shape is recorded, and specc shows no made-up numbers. "
                 "Run `specc calibrate SPEC` on the target hardware to measure tokens/s and peak memory.")


def estimates_markdown(plan) -> str:
    """plan.md's "## Estimates": every number with its source."""
    rows = [(run, run.config.get("estimate")) for run in plan.runs]
    if not any(e and e.get("source") != "none" for _, e in rows):
        notes = {e["source_text"] for _, e in rows if e and e.get("source_text")}
        return NOT_ESTIMATED + ("".join(f"\n- {n}" for n in sorted(notes)) if notes else "")
    lines = ["| run | source | tokens | tokens/s | steps time | evals, checkpoints, … | startup | wall | job total | peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    sources: dict[str, str] = {}
    total_gpu_h, total_h = 0.0, 0.0
    for run, e in rows:
        if not e or e.get("source") == "none":
            lines.append(f"| `{run.name}` | none | — | — | — | — | — | — | — | — |")
            if e:
                sources.setdefault(e["source_text"], "none")
            continue
        sources.setdefault(e["source_text"], e["source"])
        mem = f"{e['peak_mem_gb']:.2f} GB" if e.get("peak_mem_gb") else "—"
        declared = e["source"] == "declared"
        label = "declared, unmeasured" if declared else e["source"]
        unknown = "not in the figure" if declared else None
        lines.append(f"| `{run.name}` | {label} | {fmt_count(e.get('tokens'))} | {fmt_count(e.get('tokens_per_s'))} | "
                     f"{fmt_duration(e.get('train_s'))} | {unknown or fmt_duration(e.get('overhead_s'))} | "
                     f"{unknown or fmt_duration(e.get('setup_s'))} | {fmt_duration(e.get('wall_s'))} | "
                     f"{fmt_duration(e.get('total_s'))} | {mem} |")
        if e.get("total_s"):
            total_h += e["total_s"] / 3600
            total_gpu_h += gpu_hours(e["total_s"], run.resources.gpus) or 0.0
    out = ["\n".join(lines), ""]
    out.append("Time = tokens / throughput, plus (when measured) the startup before the first step and the "
               "evaluations, checkpoints and exports around the steps. *wall* is what summary.json's wall_s "
               "measures; *job total* adds the startup.")
    out.append("")
    out.append("Sources:")
    out += [f"- {kind}: {text}" for text, kind in sources.items()]
    tokens_src = {e.get("tokens_source") for _, e in rows if e and e.get("tokens_source")}
    if len(tokens_src) == 1:
        out.append(f"- tokens: {tokens_src.pop()}")
    if total_h:
        gpus = f", {total_gpu_h:.1f} GPU-hours" if total_gpu_h else ""
        out += ["", f"All runs: {total_h:.2f} h of jobs{gpus}."]
    return "\n".join(out)
