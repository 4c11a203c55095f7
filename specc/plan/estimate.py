"""Estimates at compile time: from committed inputs only (calibrations/ files, the spec, the catalog).

`apply_estimates(plan)` attaches each run's estimate to its config (config.json's `estimate`, which
summary.json copies so `specc report` can compare), and when the estimate is *measured* (a
calibration) and the spec gives no explicit `resources.time`, it sets the sbatch --time to the
estimate + 10% + the margin (capped by the window or partition limit) and the signal lead from the
measured step and checkpoint times. `estimates_markdown(plan)` is plan.md's "## Estimates" section.
No runs/, no clock, no torch: compiling twice gives the same bytes.
"""
from __future__ import annotations

import math
from dataclasses import replace

from specc.lifecycle.calibrations import load_calibration
from specc.lifecycle.estimate import TIME_SAFETY, Estimate, estimate_run, fit_window, fmt_duration, gpu_hours
from specc.lifecycle.shape import device_key
from specc.spec.model import format_time, parse_time

NOT_ESTIMATED = ("Not estimated: no calibration or prior run of this shape is recorded, and specc shows no made-up numbers. "
                 "Run `specc calibrate SPEC` on the target hardware to measure tokens/s and peak memory.")
MIN_SIGNAL_LEAD_S = 60        # SLURM may deliver the signal up to a minute off


def plan_estimates(plan, calibrations_dir=None, found: list | None = None) -> dict[str, Estimate]:
    """{run name: Estimate} from calibrations and declared figures (never runs/)."""
    cache: dict[str, object] = {}
    out = {}
    for run in plan.runs:
        key = device_key(run.config["resources"])
        if key not in cache:
            cache[key] = load_calibration(key, calibrations_dir)
            if cache[key] is not None and found is not None:
                found.append(cache[key])
        out[run.name] = estimate_run(run.config, calibration=cache[key])
    return out


def apply_estimates(plan, calibrations_dir=None):
    """The plan with estimates in each run's config, and --time/--signal from a measured estimate."""
    found: list = []
    estimates = plan_estimates(plan, calibrations_dir, found)
    if not found and all(e.source == "none" for e in estimates.values()):
        return plan   # nothing known: config.json and plan.md stay as they were
    runs, warnings = [], list(plan.warnings)
    for run in plan.runs:
        est = estimates[run.name]
        r = run.spec.resources
        config = dict(run.config)
        block = est.to_config()
        block["window_hours"], block["margin_hours"] = r.window_hours, r.margin_hours
        config["estimate"] = block
        resources = run.resources
        if est.source == "calibration" and est.total_s and run.kind == "train":
            limit = parse_time(resources.time)
            if r.time is None:
                wanted = _round_up(est.total_s * (1 + TIME_SAFETY) + r.margin_hours * 3600, 300)
                if wanted < limit:
                    resources = replace(resources, time=format_time(wanted), time_source=(
                        f"estimate {fmt_duration(est.total_s)} + {TIME_SAFETY:.0%} + margin {r.margin_hours:g} h "
                        f"(calibration), under {resources.time_source}"))
            if r.signal_lead_s is None:
                step, ckpt = est.step_s or 0.0, est.checkpoint_s or 0.0
                lead = max(MIN_SIGNAL_LEAD_S, math.ceil(step + 2 * ckpt) + 30)
                lead = min(lead, max(10, parse_time(resources.time) // 4))
                resources = replace(resources, signal_lead_s=int(lead),
                                    signal_lead_source=f"calibration: a step ({step:.1f} s) + 2 × a checkpoint "
                                                       f"({ckpt:.1f} s) + 30 s")
            config["resources"] = resources.to_dict()
        if run.kind == "train" and est.total_s is not None:
            fit = fit_window(config, est, r.window_hours, r.margin_hours,
                             None if r.window_hours else parse_time(resources.time))
            if fit.fits is False:
                warnings.append(f"run {run.name}: estimated {fmt_duration(est.total_s)} ({est.source}) "
                                f"{fit.text.split(': ', 1)[-1]}")
        runs.append(replace(run, config=config, resources=resources))
    return replace(plan, runs=tuple(runs), warnings=tuple(dict.fromkeys(warnings)))


def _round_up(seconds: float, to: int) -> int:
    return int(math.ceil(seconds / to) * to)


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
        lines.append(f"| `{run.name}` | {label} | {_n(e.get('tokens'))} | {_n(e.get('tokens_per_s'))} | "
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


def _n(x) -> str:
    if x is None:
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.1f} k"
    return f"{x:,.0f}"
