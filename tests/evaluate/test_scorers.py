"""Scorers and statistics: each metric on real strings, custom scorers from the spec's directory, Wilson intervals."""
from __future__ import annotations

import math

import pytest

from specc.errors import UserError
from specc.evaluate.scorers import make_scorer, normalize, parse_number
from specc.evaluate.stats import difference_ci, mean_ci
from specc.spec.evaluation import Task


def scorer(**task):
    return make_scorer(Task(name="t", **task))


def test_normalize_in_a_fixed_order():
    assert normalize("  Hello,  World! ", ["strip"]) == "Hello,  World!"
    assert normalize("  Hello,  World! ", ["punctuation", "lowercase", "whitespace"]) == "hello world"


def test_exact_match_and_contains():
    s = scorer(metric="exact_match", normalize=["strip", "lowercase"])
    assert s(" Paris\n", "paris", {}) == 1.0 and s("Paris.", "paris", {}) == 0.0
    s = scorer(metric="contains", normalize=["lowercase"])
    assert s("The capital is PARIS, of course", "Paris", {}) == 1.0 and s("Lyon", "Paris", {}) == 0.0


def test_regex_takes_the_first_group_of_prediction_and_reference():
    s = scorer(metric="regex", pattern=r"answer:\s*(\w+)")
    assert s("work... answer: 42 done", "answer: 42", {}) == 1.0
    assert s("answer: 41", "42", {}) == 0.0
    assert s("no answer here", "42", {}) == 0.0


def test_numeric_within_tolerance():
    s = scorer(metric="numeric", tolerance=0.01)
    assert parse_number("about 1,234.5 units") == 1234.5
    assert s("It is 3.141", "3.14", {}) == 1.0 and s("3.2", "3.14", {}) == 0.0 and s("none", "3", {}) == 0.0
    with pytest.raises(ValueError, match="holds no number"):
        s("3", "n/a", {})


def test_choice_from_the_task_or_the_example():
    s = scorer(metric="choice", options=["A", "B", "C"], normalize=["strip", "lowercase"])
    assert s(" b) because", "B", {}) == 1.0 and s("C", "B", {}) == 0.0
    s = scorer(metric="choice", normalize=["lowercase"])
    assert s("yes, certainly", "yes", {"options": ["yes", "no"]}) == 1.0
    with pytest.raises(ValueError, match="no options"):
        s("yes", "yes", {})


def test_custom_scorer_from_the_spec_directory(tmp_path):
    (tmp_path / "myscore.py").write_text("def length_ratio(prediction, reference, example):\n"
                                         "    return min(len(prediction), len(reference)) / max(len(reference), 1)\n")
    s = make_scorer(Task(name="t", metric="custom", custom="myscore:length_ratio"), tmp_path)
    assert s("abc", "abcdef", {}) == 0.5
    with pytest.raises(UserError, match="does not import"):
        make_scorer(Task(name="t", metric="custom", custom="nosuchmodule:fn"), tmp_path)
    with pytest.raises(UserError, match="has no function 'missing'"):
        make_scorer(Task(name="t", metric="custom", custom="myscore:missing"), tmp_path)


def test_wilson_interval_for_binary_scores():
    e = mean_ci([1.0] * 8 + [0.0] * 2)
    assert e.method == "wilson" and e.mean == pytest.approx(0.8)
    assert (round(e.low, 4), round(e.high, 4)) == (0.4902, 0.9433)       # Wilson 95% for 8/10
    assert mean_ci([1.0] * 5).high == 1.0 and mean_ci([0.0] * 5).low == 0.0
    assert mean_ci([]).mean is None


def test_normal_interval_and_difference():
    e = mean_ci([0.2, 0.4, 0.6, 0.8])
    assert e.method == "normal" and e.mean == pytest.approx(0.5)
    half = 1.959964 * math.sqrt(sum((x - 0.5) ** 2 for x in [0.2, 0.4, 0.6, 0.8]) / 3 / 4)
    assert e.high - e.mean == pytest.approx(half)
    d, lo, hi = difference_ci(mean_ci([1.0] * 9 + [0.0]), mean_ci([0.0] * 9 + [1.0]))
    assert d == pytest.approx(0.8) and lo < 0.8 < hi


def test_a_difference_of_proportions_stays_inside_minus_one_to_one():
    """200/200 against 0/200: the difference is 1 and its interval may not claim more than 1."""
    d, lo, hi = difference_ci(mean_ci([1.0] * 200), mean_ci([0.0] * 200))
    assert d == 1.0 and 0.9 < lo < 1.0 and hi == 1.0
    d, lo, hi = difference_ci(mean_ci([0.0] * 200), mean_ci([1.0] * 200))
    assert d == -1.0 and lo == -1.0 and -1.0 < hi < -0.9
    d, lo, hi = difference_ci(mean_ci([1.2, 1.4, 1.0]), mean_ci([0.0, 0.1, 0.0]))   # not proportions: not clipped
    assert hi > d > 1.0
