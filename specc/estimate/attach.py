"""Estimates at compile time, from committed inputs only (calibrations/ files, the spec, the catalog).

`apply_estimates(plan)` attaches each run's estimate to its config (config.json's `estimate`, which
summary.json copies so `specc report` can compare), and when the estimate is *measured* (a
calibration) and the spec gives no explicit `resources.time`, it sets the sbatch --time to the
estimate + 10% + the margin (capped by the window or partition limit) and the signal lead from the
measured step and checkpoint times. No runs/, no clock, no torch: compiling twice gives the same bytes.
"""
from __future__ import annotations

import math
from dataclasses import replace

from specc.estimate.calibrations import load_calibration
from specc.estimate.fit import fit_window
from specc.estimate.result import Estimate
from specc.estimate.shape import device_key
from specc.estimate.sources import estimate_run
from specc.fmt import fmt_duration
from specc.spec.model import format_time, parse_time

TIME_SAFETY = 0.10            # a measured estimate is padded by 10% before it sets a time limit
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
            resources = _measured_limits(resources, r, est)
            config["resources"] = resources.to_dict()
        elif est.source == "calibration" and est.total_s and run.kind == "control":
            resources = _control_limit(resources, est, plan)
            config["resources"] = resources.to_dict()
        if run.kind == "train" and est.total_s is not None:
            fit = fit_window(config, est, r.window_hours, r.margin_hours,
                             None if r.window_hours else parse_time(resources.time))
            if fit.fits is False:
                warnings.append(f"run {run.name}: estimated {fmt_duration(est.total_s)} ({est.source}) "
                                f"{fit.text.split(': ', 1)[-1]}")
        runs.append(replace(run, config=config, resources=resources))
    return replace(plan, runs=tuple(runs), warnings=tuple(dict.fromkeys(warnings)))


def _measured_limits(resources, requested, est: Estimate):
    """--time from the estimate (unless the spec set resources.time) and the signal lead from the measured
    step and checkpoint (unless the spec set resources.signal_lead_s)."""
    limit = parse_time(resources.time)
    if requested.time is None:
        wanted = _round_up(est.total_s * (1 + TIME_SAFETY) + requested.margin_hours * 3600, 300)
        if wanted < limit:
            resources = replace(resources, time=format_time(wanted), time_source=(
                f"estimate {fmt_duration(est.total_s)} + {TIME_SAFETY:.0%} + margin {requested.margin_hours:g} h "
                f"(calibration), under {resources.time_source}"))
    if requested.signal_lead_s is None:
        step, ckpt = est.step_s or 0.0, est.checkpoint_s or 0.0
        lead = max(MIN_SIGNAL_LEAD_S, math.ceil(step + 2 * ckpt) + 30)
        lead = min(lead, max(10, parse_time(resources.time) // 4))
        resources = replace(resources, signal_lead_s=int(lead),
                            signal_lead_source=f"calibration: a step ({step:.1f} s) + 2 × a checkpoint "
                                               f"({ckpt:.1f} s) + 30 s")
    return resources


def _control_limit(resources, est: Estimate, plan):
    """An eval-only control run's --time from its measured evaluation: + 10% + 5 min, within the partition."""
    from specc.spec.clusters import load_catalog

    catalog, _ = load_catalog(plan.spec_path, plan.spec.resources.catalog)
    cluster = catalog.clusters.get(resources.cluster)
    part = cluster.partitions.get(resources.partition) if cluster else None
    wanted = _round_up(est.total_s * (1 + TIME_SAFETY) + 300, 300)
    if part is not None:
        wanted = min(wanted, part.max_seconds)
    lead = resources.signal_lead_s if resources.signal_lead_source == "resources.signal_lead_s" else \
        min(resources.signal_lead_s, max(10, wanted // 4))
    return replace(resources, time=format_time(wanted), signal_lead_s=int(lead), time_source=(
        f"eval-only control run: estimated evaluation {fmt_duration(est.total_s)} + {TIME_SAFETY:.0%} + 5 min "
        "(calibration)"))


def _round_up(seconds: float, to: int) -> int:
    return int(math.ceil(seconds / to) * to)
