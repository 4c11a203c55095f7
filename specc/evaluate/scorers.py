"""Scorers: one generated answer against its reference → a score in [0, 1].

exact_match, contains and choice compare normalized text; regex takes the pattern's first group of the
prediction (and of the reference, if it matches there too); numeric parses the first number of each and
compares within `tolerance`; custom calls the spec author's `package.module:function(prediction,
reference, example)`, imported from the spec's directory or the environment.
"""
from __future__ import annotations

import importlib
import math
import re
import string
import sys
from pathlib import Path
from typing import Callable

from specc.errors import UserError

Scorer = Callable[[str, str, dict], float]
_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str, steps: list[str]) -> str:
    """Apply the task's normalizations, in a fixed order whatever order the spec lists them."""
    if "lowercase" in steps:
        text = text.lower()
    if "punctuation" in steps:
        text = text.translate(_PUNCT)
    if "whitespace" in steps:
        text = " ".join(text.split())
    if "strip" in steps or "whitespace" in steps:
        text = text.strip()
    return text


def parse_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    if not m:
        return None
    try:
        return float(m.group().replace(",", ""))
    except ValueError:
        return None


def make_scorer(task, spec_dir: Path | None = None) -> Scorer:
    """The task's scorer; a custom one is imported now, so a scorer that does not import fails before generation."""
    steps = list(task.normalize)
    if task.metric == "exact_match":
        return lambda pred, ref, ex: float(normalize(pred, steps) == normalize(ref, steps))
    if task.metric == "contains":
        return lambda pred, ref, ex: float(normalize(ref, steps) in normalize(pred, steps))
    if task.metric == "regex":
        pattern = re.compile(task.pattern)

        def by_regex(pred, ref, ex):
            got = pattern.search(pred)
            want = pattern.search(ref)
            answer = want.group(1) if want else ref
            return float(got is not None and normalize(got.group(1) or "", steps) == normalize(answer, steps))
        return by_regex
    if task.metric == "numeric":
        tol = task.tolerance

        def by_number(pred, ref, ex):
            got, want = parse_number(pred), parse_number(ref)
            if want is None:
                raise ValueError(f"the reference {ref!r} holds no number")
            return float(got is not None and math.isfinite(got) and abs(got - want) <= tol)
        return by_number
    if task.metric == "choice":
        fixed = task.options

        def by_choice(pred, ref, ex):
            options = fixed or ex.get("options")
            if not options:
                raise ValueError("no options: give the task `options` or each example an 'options' list")
            got = normalize(pred, steps)
            picked = [o for o in options if normalize(str(o), steps) and got.startswith(normalize(str(o), steps))]
            best = max(picked, key=lambda o: len(str(o)), default=None)   # the longest option the answer starts with
            return float(best is not None and normalize(str(best), steps) == normalize(ref, steps))
        return by_choice
    if task.metric == "custom":
        return load_custom(task.custom, spec_dir)
    raise UserError(f"unknown metric {task.metric!r}")


def load_custom(target: str, spec_dir: Path | None) -> Scorer:
    """Import `package.module:function`, looking in the spec's directory first (the author's own code)."""
    module_name, _, name = target.partition(":")
    added = spec_dir is not None and str(spec_dir) not in sys.path
    if added:
        sys.path.insert(0, str(spec_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(f"custom scorer {target!r} does not import: {type(exc).__name__}: {exc}",
                        hint=f"the module must be importable from {spec_dir or 'the environment'} "
                             "(a .py file beside the spec, or an installed package)") from None
    finally:
        if added:
            sys.path.remove(str(spec_dir))
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"custom scorer {target!r}: {module_name} has no function {name!r}",
                        hint="define `def " + name + "(prediction, reference, example) -> float`")
    return fn
