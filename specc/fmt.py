"""How numbers and text are shown: durations, counts, significant digits, and text safe to print as rich markup.

One place, so `specc plan`, `report`, `watch`, `status`, `diff` and plan.md say "1.19 h" the same way.
Pure Python (rich only for its markup escaping).
"""
from __future__ import annotations

from rich.markup import escape


def fmt_duration(seconds: float | None) -> str:
    """'4.2 s', '42 s', '4.2 min', '4.20 h'; '?' when unknown."""
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def compact_duration(seconds: float | None) -> str:
    """'1.2h', '3.4m', '42s' for narrow table columns; '—' when unknown."""
    if seconds is None:
        return "—"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.1f}m" if seconds >= 60 else f"{seconds:.0f}s"


def fmt_count(x: float | None) -> str:
    """'1.23 M', '45.6 k', '999'; '—' when unknown."""
    if x is None:
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.1f} k"
    return f"{x:,.0f}"


def significant(x: float | None, digits: int = 4) -> float | None:
    """x rounded to `digits` significant digits, as a float (None stays None)."""
    return None if x is None else float(f"{x:.{digits}g}")


def rounded_floats(obj, digits: int = 6):
    """Every float inside a JSON-like value rounded to `digits` significant digits (files that diff well)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded_floats(v, digits) for v in obj]
    return obj


def markup_safe(x) -> str:
    """str(x) with rich markup escaped: user text (names, paths, reasons) is never read as markup."""
    return escape(str(x))
