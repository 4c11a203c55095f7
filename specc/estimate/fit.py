"""Fitting a run to its time window, sizing its batch for the GPU, and GPU-hours."""
from __future__ import annotations

import math
from dataclasses import dataclass

from specc.estimate.result import Estimate
from specc.fmt import fmt_duration
from specc.spec.profiles import PROFILES

MEMORY_TARGET = 0.70          # the seeds: size the batch for 70% of GPU memory


@dataclass(frozen=True)
class Fit:
    fits: bool | None           # None: no estimate
    budget_s: float | None      # window - margin
    need_s: float | None
    text: str
    suggestions: tuple[str, ...] = ()


def fit_window(config: dict, est: Estimate, window_hours: float | None, margin_hours: float,
               time_limit_s: float | None = None) -> Fit:
    """Does the run fit its window (window - margin)? If not, what would make it fit."""
    if window_hours:
        budget, what = (window_hours - margin_hours) * 3600, f"{window_hours:g} h window − {margin_hours:g} h margin"
    elif time_limit_s:
        # The margin belongs to a window; against a bare time limit keep at most a tenth of it in hand.
        held = min(margin_hours * 3600, 0.1 * time_limit_s)
        budget, what = time_limit_s - held, f"time limit {fmt_duration(time_limit_s)} − {fmt_duration(held)} held back"
    else:
        return Fit(None, None, est.total_s, "no window or time limit to fit")
    need = est.total_s
    if need is None:
        return Fit(None, budget, None, f"cannot tell: no estimate ({est.source_text})")
    label = (f"{fmt_duration(need)} of {fmt_duration(budget)} ({what}, {100 * need / budget:.0f}% used)"
             if budget > 0 else what)
    if need <= budget:
        return Fit(True, budget, need, f"fits: {label}")
    return Fit(False, budget, need, f"does NOT fit: needs {label}",
               tuple(_what_would_fit(config, est, need, budget, window_hours, margin_hours)))


def _what_would_fit(config: dict, est: Estimate, need: float, budget: float, window_hours: float | None,
                    margin_hours: float) -> list[str]:
    suggestions = []
    t = config["training"]
    fixed = est.setup_s
    variable = need - fixed
    room = budget - fixed
    if room > 0 and variable > 0:
        share = room / variable
        if t.get("epochs"):
            suggestions.append(f"train {math.floor(float(t['epochs']) * share * 10) / 10:g} epochs instead of "
                               f"{float(t['epochs']):g}")
        elif t.get("max_steps"):
            suggestions.append(f"train {int(t['max_steps'] * share):,} steps instead of {t['max_steps']:,}")
    if window_hours:
        suggestions.append(f"ask for a window of {math.ceil((need / 3600 + margin_hours) * 4) / 4:g} h "
                           f"(estimate + {margin_hours:g} h margin)")
    else:
        suggestions.append(f"ask for a time limit of at least {fmt_duration(need / 0.9)}")
    if est.source == "declared":
        for name in ("fast", "balanced", "quality", "memory_efficient"):
            p = PROFILES[name]
            if name != config.get("profile") and p.declared_tokens_per_s and est.tokens:
                alt = est.tokens / p.declared_tokens_per_s
                if alt <= budget:
                    suggestions.append(f"profile {name} (declared {p.declared_tokens_per_s:g} tok/s): {fmt_duration(alt)}")
    else:
        suggestions.append("a faster shape: calibrate a larger batch or shorter max_length (`specc calibrate`)")
    return suggestions


def recommend_batch(est: Estimate, gpu_memory_gb: float | None, batch_size: int, grad_accum: int,
                    fixed_gb: float | None = None, headroom: float = MEMORY_TARGET) -> tuple[int, int, str] | None:
    """(batch, accum, why): the largest batch that keeps measured peak memory under `headroom` (the spec's
    resources.memory_headroom, 70% by default) of the GPU, with accumulation keeping the effective batch
    (batch × accum) where it was. Used when the model's architecture is not readable here; otherwise
    specc/estimate/memory.py sizes the batch from its parts."""
    if not gpu_memory_gb or not est.peak_mem_gb or not est.measured:
        return None
    target = headroom * gpu_memory_gb
    peak = est.peak_mem_gb
    if fixed_gb is None:
        fixed_gb = est.fixed_mem_gb
    if fixed_gb is not None and 0 < fixed_gb < peak:
        per_row = (peak - fixed_gb) / batch_size
        best = max(1, int((target - fixed_gb) / per_row))
        how = f"({headroom:.0%} of {gpu_memory_gb:g} GB − {fixed_gb:.1f} GB fixed) / {per_row:.2f} GB per row"
    else:   # the seeds' rule: headroom = GPU / peak, × 0.7
        best = max(1, int(batch_size * target / peak))
        how = f"{batch_size} × {headroom:.0%} × {gpu_memory_gb:g} GB / {peak:.1f} GB measured peak"
    effective = batch_size * grad_accum
    best = min(best, effective) if effective >= best else best
    accum = max(1, round(effective / best))
    return best, accum, f"batch {best} × accum {accum}: {how} ({est.mem_source})"


def gpu_hours(total_s: float | None, gpus: int) -> float | None:
    return None if total_s is None else total_s / 3600 * max(gpus, 0)
