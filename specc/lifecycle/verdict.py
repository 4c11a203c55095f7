"""Judge a hypothesis' expected outcomes against what a run measured: CONFIRMED, REJECTED or INCONCLUSIVE.

An expectation {metric, comparator, target, tolerance, relative, vs_baseline, vs_control} reads:

- the measured value is the run's metric, or with vs_baseline the ratio run / baseline run, or with
  vs_control the difference run − control run (the same base model, untrained: e.g. exact match gained);
- tolerance is slack in the lenient direction, absolute, or a fraction of |target| when relative;
- `<` and `>` are strict at the (slackened) bound, `<=`, `>=`, `==` and `within` include it:

      <       value <  target + tol          >       value >  target - tol
      <=      value <= target + tol          >=      value >= target - tol
      ==, within   |value - target| <= tol

INCONCLUSIVE when the evidence is missing rather than against: the metric (or the baseline's) is
absent, the run did not complete, it stopped before any evaluation (validation metrics), or it ran
too few steps to say anything. A task metric (eval.<task>.<metric>) carries a 95% interval; when the
bound lies inside the interval of the value compared (of the difference, for vs_control), the data
cannot tell, and that is INCONCLUSIVE too, with the interval in the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from specc.evaluate.stats import difference_interval
from specc.rundir import FINISHED

CONFIRMED, REJECTED, INCONCLUSIVE = "CONFIRMED", "REJECTED", "INCONCLUSIVE"
MIN_STEP_SHARE = 0.1          # an early-stopped run that did under 10% of its steps says too little
SYMBOL = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "=", "within": "within"}


@dataclass(frozen=True)
class Verdict:
    metric: str
    comparator: str
    target: float
    tolerance: float
    relative: bool
    vs_baseline: bool
    verdict: str
    vs_control: bool = False
    value: float | None = None          # what was compared: the metric, or the ratio to the baseline
    measured: float | None = None       # the run's own value
    baseline: float | None = None       # the baseline's value (vs_baseline), or the control's (vs_control)
    interval: tuple[float, float] | None = None   # 95% interval of `value`, for task metrics
    reason: str = ""

    @property
    def expectation(self) -> str:
        tol = ""
        if self.tolerance:
            tol = f" ± {self.tolerance:.0%}" if self.relative else f" ± {self.tolerance:g}"
        base = " × baseline" if self.vs_baseline else " over the control" if self.vs_control else ""
        return f"{self.metric} {SYMBOL.get(self.comparator, self.comparator)} {self.target:g}{base}{tol}"


def slack(target: float, tolerance: float, relative: bool) -> float:
    return tolerance * abs(target) if relative else tolerance


def compare(value: float, comparator: str, target: float, tolerance: float = 0.0, relative: bool = False) -> bool:
    """Does `value` meet the expectation? (The rule in the module docstring.)"""
    tol = slack(target, tolerance, relative)
    if comparator == "<":
        return value < target + tol
    if comparator == "<=":
        return value <= target + tol
    if comparator == ">":
        return value > target - tol
    if comparator == ">=":
        return value >= target - tol
    if comparator in ("==", "within"):
        return abs(value - target) <= tol
    raise ValueError(f"unknown comparator {comparator!r}")


VAL_METRICS = ("val_loss", "best_val_loss")


def metric_value(summary: dict | None, metric: str, records: list[dict] | None = None) -> float | None:
    """A metric of a finished run: the named ones, or any (dotted) numeric key of summary.json."""
    if not summary:
        return None
    derived = {
        "wall_hours": (summary.get("wall_s") or None) and summary["wall_s"] / 3600,
        "peak_mem_gb": (summary.get("peak_mem_mb") or None) and summary["peak_mem_mb"] / 1024,
    }
    if metric in derived:
        return _num(derived[metric])
    if metric == "val_loss" and summary.get("val_loss") is None and records:
        vals = [r["val_loss"] for r in records if isinstance(r.get("val_loss"), (int, float))]
        return _num(vals[-1]) if vals else None
    value = summary
    for part in metric.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return _num(value)


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _why_not_evaluable(summary: dict | None, metric: str) -> str | None:
    if summary is None:
        return "the run has no summary.json (still running, or killed before it finished)"
    status = summary.get("status")
    if status == "running":
        return "the run has not ended (summary.json says running)"
    if status not in FINISHED:
        reason = summary.get("stop_reason")
        return f"the run did not complete (status {status})" + (f": {reason}" if reason else "")
    steps, total = summary.get("steps") or 0, summary.get("total_steps") or 0
    if summary.get("kind") != "control":
        if steps == 0:
            return "the run did no training step"
        if status == "early_stopped" and total and steps < MIN_STEP_SHARE * total:
            return f"too few steps to judge: early-stopped at {steps} of {total}"
        if metric in VAL_METRICS and status == "early_stopped" and not summary.get("best_step"):
            return "early-stopped before any evaluation after training started"
    return None


def metric_interval(summary: dict | None, metric: str) -> tuple[float, float] | None:
    """The 95% interval summary.json gives a task metric (eval.<task>.<metric> → eval.<task>.ci95)."""
    parts = metric.split(".")
    if len(parts) != 3 or parts[0] != "eval" or not summary:
        return None
    ci = ((summary.get("eval") or {}).get(parts[1]) or {}).get("ci95")
    if isinstance(ci, list) and len(ci) == 2 and all(_num(x) is not None for x in ci):
        return float(ci[0]), float(ci[1])
    return None


def judge(expected: dict, summary: dict | None, records: list[dict] | None = None,
          baseline_summary: dict | None = None, baseline_records: list[dict] | None = None,
          baseline_name: str | None = None, control_summary: dict | None = None,
          control_name: str | None = None) -> Verdict:
    """One expectation (a dict like config.json's hypothesis.expected items) against one run."""
    e = dict(metric=expected["metric"], comparator=expected["comparator"], target=float(expected["target"]),
             tolerance=float(expected.get("tolerance") or 0.0), relative=bool(expected.get("relative")),
             vs_baseline=bool(expected.get("vs_baseline")), vs_control=bool(expected.get("vs_control")))
    why = _why_not_evaluable(summary, e["metric"])
    if why:
        return Verdict(**e, verdict=INCONCLUSIVE, reason=why)
    measured = metric_value(summary, e["metric"], records)
    if measured is None:
        return Verdict(**e, verdict=INCONCLUSIVE, reason=f"metric {e['metric']!r} is not in the run's summary or metrics")
    value, base, interval = measured, None, metric_interval(summary, e["metric"])
    if e["vs_control"] or e["vs_baseline"]:
        base, why = (_reference_value(control_summary, None, e["metric"], "control", "the control run",
                                      f"no finished control run ({control_name or 'none in the experiment'})")
                     if e["vs_control"] else
                     _reference_value(baseline_summary, baseline_records, e["metric"], "baseline", "the baseline",
                                      f"no finished baseline run ({baseline_name or 'no baseline named'})"))
        if why:
            return Verdict(**e, verdict=INCONCLUSIVE, measured=measured, reason=why)
    if e["vs_control"]:
        value = measured - base
        interval = _control_interval(summary, control_summary, e["metric"], measured, base)
    elif e["vs_baseline"]:
        if base == 0:
            return Verdict(**e, verdict=INCONCLUSIVE, measured=measured, baseline=base,
                           reason="the baseline's value is 0: no ratio")
        value = measured / base
        interval = None
    ok = compare(value, e["comparator"], e["target"], e["tolerance"], e["relative"])
    tol = slack(e["target"], e["tolerance"], e["relative"])
    what = (f"ratio {value:.4g}" if e["vs_baseline"] else
            f"difference {value:.4g} ({measured:.4g} − control {base:.4g})" if e["vs_control"] else f"{value:.4g}")
    bound = _bound_text(e["comparator"], e["target"], tol)
    if interval is not None and _undecided(interval, e["comparator"], e["target"], tol):
        return Verdict(**e, verdict=INCONCLUSIVE, value=value, measured=measured, baseline=base, interval=interval,
                       reason=f"{what}: its 95% interval [{interval[0]:.4g}, {interval[1]:.4g}] reaches across "
                              f"{bound}, so the data cannot tell (score more examples)")
    ci = f", 95% interval [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""
    return Verdict(**e, verdict=CONFIRMED if ok else REJECTED, value=value, measured=measured, baseline=base,
                   interval=interval, reason=f"{what}{ci} {'meets' if ok else 'misses'} {bound}")


def _reference_value(summary: dict | None, records, metric: str, role: str, named: str, absent: str):
    """(the control's or baseline's value, None), or (None, why the comparison cannot be made)."""
    if summary is None:
        return None, f"{absent} to compare with"
    why = _why_not_evaluable(summary, metric)
    if why:
        return None, f"{role}: {why}"
    value = metric_value(summary, metric, records)
    return (value, None) if value is not None else (None, f"{named} has no {metric!r}")


def _control_interval(summary: dict, control: dict, metric: str, mean_a: float, mean_b: float):
    """The interval of run − control for a task metric (None without both intervals)."""
    a, b = metric_interval(summary, metric), metric_interval(control, metric)
    if a is None or b is None:
        return None
    methods = {_ci_method(summary, metric), _ci_method(control, metric)}
    return difference_interval(a, b, mean_a, mean_b, proportions=methods == {"wilson"})


def _ci_method(summary: dict, metric: str) -> str | None:
    return ((summary.get("eval") or {}).get(metric.split(".")[1]) or {}).get("ci_method")


def _undecided(interval: tuple[float, float], comparator: str, target: float, tol: float) -> bool:
    """Whether the bound lies strictly inside the interval: one end meets it, the other misses it."""
    low, high = interval
    ends = [compare(x, comparator, target, tol) for x in (low, high)]
    return ends[0] != ends[1]


def _bound_text(comparator: str, target: float, tol: float) -> str:
    if comparator in ("==", "within"):
        return f"[{target - tol:.4g}, {target + tol:.4g}]"
    if comparator in ("<", "<="):
        return f"{SYMBOL[comparator]} {target + tol:.4g}"
    return f"{SYMBOL[comparator]} {target - tol:.4g}"


def overall(verdicts: list[Verdict]) -> str:
    """An experiment's hypothesis: REJECTED if any expectation is, CONFIRMED if all are, else INCONCLUSIVE."""
    if not verdicts:
        return INCONCLUSIVE
    kinds = {v.verdict for v in verdicts}
    if REJECTED in kinds:
        return REJECTED
    return CONFIRMED if kinds == {CONFIRMED} else INCONCLUSIVE
