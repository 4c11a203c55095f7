"""Safe YAML loading: plain values only, with the file:line:col of every node."""
from __future__ import annotations

import math
import time

import pytest

from specc.errors import SpecError
from specc.spec.loader import load_yaml, load_yaml_text


def issues_of(text: str):
    with pytest.raises(SpecError) as info:
        load_yaml_text(text, "s.yaml")
    return info.value.issues


def test_python_tag_is_rejected_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "experiment: x\nmodel: !!python/object/apply:os.system ['touch CANARY']\n"
    [issue] = issues_of(text)
    assert (issue.file, issue.line, issue.col) == ("s.yaml", 2, 8)
    assert "tag" in issue.message and "python/object/apply:os.system" in issue.message
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("text", [
    "a: !custom 1\n",
    "a: !!binary aGVsbG8=\n",
    "a: !!set {x, y}\n",
    "a: !!timestamp 2024-01-01\n",
    "!!python/name:os.system a: 1\n",
])
def test_any_non_default_tag_is_rejected(text):
    issues = issues_of(text)
    assert issues and all("tag" in i.message or "keys" in i.message for i in issues)


def test_duplicate_keys_report_both_lines():
    text = "a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\n"
    [issue] = issues_of(text)
    assert (issue.line, issue.col) == (5, 3)
    assert "duplicate key 'c'" in issue.message and "line 3" in issue.message
    assert issue.path == "b.c"


def test_anchor_and_alias_are_rejected():
    text = "a: &x {k: 1}\nb: *x\n"
    messages = [i.message for i in issues_of(text)]
    assert any("anchors" in m for m in messages)
    assert any("aliases" in m for m in messages)


def test_alias_bomb_fails_fast():
    rows = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    start = time.perf_counter()
    issues = issues_of("\n".join(rows) + "\n")
    assert time.perf_counter() - start < 2
    assert any("aliases" in i.message for i in issues)


def test_syntax_error_has_position():
    [issue] = issues_of("a: 1\nb: [1, 2\nc: 3\n")
    assert issue.message.startswith("YAML syntax error")
    assert issue.line >= 2 and issue.col >= 1


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(SpecError, match="empty"):
        load_yaml(empty)
    with pytest.raises(SpecError) as info:
        load_yaml(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value)
    with pytest.raises(SpecError, match="cannot read"):
        load_yaml(tmp_path)   # a directory


def test_plain_scalars():
    data = load_yaml_text(
        "i: 12\nh: 0x1f\nu: 1_000\nf: 1.5e-4\nb: true\nn: null\ns: '12'\ninf: .inf\nnan: .nan\nl: [1, two]\n", "s"
    ).data
    assert data["i"] == 12 and data["h"] == 31 and data["u"] == 1000
    assert data["f"] == 1.5e-4 and data["b"] is True and data["n"] is None and data["s"] == "12"
    assert data["inf"] == math.inf and math.isnan(data["nan"]) and data["l"] == [1, "two"]


def test_positions_of_keys_and_values():
    text = "a:\n  b:\n    - x\n    - {c: 1}\n"
    located = load_yaml_text(text, "s.yaml")
    assert located.where(("a", "b", 0)) == (3, 7)
    assert located.where(("a", "b", 1, "c")) == (4, 11)
    assert located.where_key(("a", "b")) == (2, 3)
    # A path that does not exist points at its nearest ancestor.
    assert located.where(("a", "b", 1, "zzz")) == located.where(("a", "b", 1))
    assert located.issue(("a", "b"), "m", key=True).line == 2


def test_non_string_keys_are_rejected():
    issues = issues_of("? [1, 2]\n: x\n")
    assert any("keys must be plain strings" in i.message for i in issues)
