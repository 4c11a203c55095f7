"""`specc check` and `specc plan` fail on the inputs `specc run` would fail on, with the same messages, in full.

Each broken input once passed both with exit 0 (plan even said the run "fits").
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny_llama import make_tiny_llama
from tests.test_cli import specc

GOOD_LINE = json.dumps({"prompt": "a ->", "completion": " A"})


def _workspace(tmp_path: Path) -> Path:
    make_tiny_llama(tmp_path / "model", tokenizer="words")
    (tmp_path / "data").mkdir()
    for split in ("train", "valid"):
        (tmp_path / "data" / f"{split}.jsonl").write_text((GOOD_LINE + "\n") * 20)
    return tmp_path


def _spec(root: Path, *, metric: str = "best_val_loss", valid: str = "data/valid.jsonl") -> Path:
    spec = root / "spec.yaml"
    spec.write_text(f"""experiment: inputs
hypothesis:
  statement: the inputs are checked
  expected:
    - {{metric: {metric}, comparator: "<", target: 1.0}}
model: {{path: model, quantization: none}}
data: {{train: data/train.jsonl, valid: {valid}, format: prompt_completion, max_length: 64}}
training: {{max_steps: 20, batch_size: 2, grad_accum: 1, schedule: {{warmup_steps: 1}}}}
resources: {{cluster: local, partition: debug, time: "00:20:00"}}
""")
    return spec


def _break(root: Path, what: str) -> tuple[Path, str]:
    """Break one input; return the spec and a piece of the message `specc run` gives for it."""
    if what == "missing data file":
        (root / "data" / "train.jsonl").unlink()
        return _spec(root), "train split file not found"
    if what == "missing split":
        return _spec(root, valid="data/validation.jsonl"), "valid split file not found"
    if what == "broken jsonl line":
        lines = (root / "data" / "train.jsonl").read_text().splitlines()
        lines[6] = '{"prompt": "a ->", "completion": '
        (root / "data" / "train.jsonl").write_text("\n".join(lines) + "\n")
        return _spec(root), "train.jsonl:7:"
    if what == "model without a tokenizer":
        (root / "model" / "tokenizer.json").unlink()
        return _spec(root), "missing a tokenizer"
    if what == "misspelt metric":
        return _spec(root, metric="best_val_los"), "did you mean 'best_val_loss'?"
    raise AssertionError(what)


BROKEN = ["missing data file", "missing split", "broken jsonl line", "model without a tokenizer", "misspelt metric"]


@pytest.mark.parametrize("what", BROKEN)
def test_check_fails_on_broken_inputs(tmp_path, what):
    spec, message = _break(_workspace(tmp_path), what)
    r = specc("check", str(spec), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "spec.yaml:" in r.stderr                          # anchored at the field that names the file


@pytest.mark.parametrize("what", BROKEN)
def test_plan_fails_on_broken_inputs_in_full(tmp_path, what):
    spec, message = _break(_workspace(tmp_path), what)
    r = specc("plan", str(spec), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    if what == "broken jsonl line":
        assert "hint: each non-blank line" in r.stderr       # not truncated before the line number and hint


def test_check_passes_good_inputs_and_notes_what_is_elsewhere(tmp_path):
    root = _workspace(tmp_path)
    assert specc("check", str(_spec(root)), cwd=root).returncode == 0
    r = specc("plan", str(_spec(root)), "--runs-dir", str(root / "runs"), cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    spec = _spec(root).read_text().replace("{path: model,", "{path: /cluster/models/llama,")
    (root / "spec.yaml").write_text(spec)
    r = specc("check", str(root / "spec.yaml"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert "not on this machine" in r.stdout and "/cluster/models/llama" in r.stdout
