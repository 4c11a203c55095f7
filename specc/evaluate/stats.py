"""The mean of per-example scores and its 95% interval, so a difference smaller than the noise is not a verdict."""
from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    mean: float | None
    low: float | None
    high: float | None
    n: int
    method: str         # "wilson" (scores are 0/1) or "normal" (continuous scores)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": self.n, "ci_method": self.method}


def mean_ci(scores: list[float]) -> Estimate:
    """Wilson's interval when every score is 0 or 1 (exact match and the like), else mean ± 1.96 standard errors."""
    n = len(scores)
    if n == 0:
        return Estimate(None, None, None, 0, "none")
    mean = sum(scores) / n
    if all(s in (0.0, 1.0) for s in scores):
        denom = 1 + Z95 ** 2 / n
        centre = (mean + Z95 ** 2 / (2 * n)) / denom
        half = Z95 * math.sqrt(mean * (1 - mean) / n + Z95 ** 2 / (4 * n * n)) / denom
        # The interval always holds the observed mean (rounding could push an end past it at 0 or 1).
        return Estimate(mean, min(mean, max(0.0, centre - half)), max(mean, min(1.0, centre + half)), n, "wilson")
    var = sum((s - mean) ** 2 for s in scores) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / n)
    return Estimate(mean, mean - half, mean + half, n, "normal")


# summary.json's eval.<task> entry: the metric by name beside these fields (runner.TaskResult.summary_entry).
ENTRY_FIELDS = ("ci95", "ci_method", "n", "skipped", "scorer_errors", "adapter")


def entry_metrics(entry: dict) -> dict[str, float]:
    """The metric values of one eval.<task> entry of summary.json: {metric: mean}."""
    return {k: v for k, v in entry.items()
            if k not in ENTRY_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def difference_ci(a: Estimate, b: Estimate) -> tuple[float, float, float] | None:
    """(a - b, low, high): the difference of two independent means with a 95% interval (normal approximation)."""
    if a.mean is None or b.mean is None or not a.n or not b.n:
        return None
    ends = (lambda e: (e.low, e.high) if e.low is not None and e.high is not None else (e.mean, e.mean))
    low, high = difference_interval(ends(a), ends(b), a.mean, b.mean,
                                    proportions=a.method == b.method == "wilson")
    return a.mean - b.mean, low, high


def difference_interval(a: tuple[float, float], b: tuple[float, float], mean_a: float, mean_b: float,
                        proportions: bool = False) -> tuple[float, float]:
    """The 95% interval of mean_a − mean_b from the two means' intervals (their half-widths add in quadrature).
    Two proportions (0/1 scores) differ by at most 1: the interval is kept inside [-1, 1]."""
    half = math.sqrt(((a[1] - a[0]) / 2) ** 2 + ((b[1] - b[0]) / 2) ** 2)
    d = mean_a - mean_b
    low, high = d - half, d + half
    return (max(-1.0, low), min(1.0, high)) if proportions else (low, high)
