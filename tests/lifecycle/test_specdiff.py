"""`specc diff`: resolved field changes, runs added/removed, effect on estimates; --git; the shipped CI files."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from specc.lifecycle.specdiff import diff_files, render
from tests.lifecycle.run_files import REPO


def cli(*args):
    from specc.cli import app, register_commands

    register_commands()
    return CliRunner().invoke(app, list(args))


def test_seeds_larger_batch_against_its_baseline(in_tmp):
    d = diff_files(REPO / "specs" / "batch32-baseline.yaml", REPO / "specs" / "larger-batch.yaml")
    text = render(d)
    assert "training.batch_size: 32 → 128" in text and "training.lr: 0.0001 → 0.0004" in text
    assert "training.schedule.warmup_steps: 500 → 2000" in text
    assert "resolved.time: 1-00:00:00 → 12:00:00" in text
    assert "requested time (sum of limits) 24.00 h → 12.00 h" in text
    assert "experiment: batch32-baseline → larger-batch" in text


def test_profile_resolution_runs_added_and_estimate_effect(write_spec, in_tmp):
    old = write_spec({"profile": "balanced", "training": {"batch_size": None, "grad_accum": None},
                      "data": {"samples": 8000, "avg_tokens": 500}, "resources": {"time": "00:20:00"}},
                     name="old.yaml")
    new = write_spec({"profile": "fast", "training": {"batch_size": None, "grad_accum": None},
                      "data": {"samples": 8000, "avg_tokens": 500},
                      "sweep": {"matrix": {"model.lora.rank": [8, 16]}, "name": "r{model.lora.rank}"}},
                     name="new.yaml")
    d = diff_files(old, new)
    text = render(d, markdown=True)
    assert "`training.batch_size`: 4 → 8" in text            # resolved from the profiles, not written in either
    assert d.removed == ["main"] and d.added == ["r8", "r16"]
    assert any(e.startswith("estimated time") for e in d.effects) and "declared" in " ".join(d.effects)


def test_no_change(write_spec, in_tmp):
    a = write_spec(name="a.yaml")
    b = write_spec(name="b.yaml")
    assert "no change" in render(diff_files(a, b))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_mode_reads_the_old_version_beside_the_spec(in_tmp):
    def git(*args):
        subprocess.run(["git", *args], cwd=in_tmp, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    specs = in_tmp / "specs"
    specs.mkdir()
    (specs / "data.jsonl").write_text('{"text": "a"}\n' * 40)   # spec-relative: must resolve the same in both
    text = (REPO / "specs" / "quickstart.yaml").read_text()
    (specs / "q.yaml").write_text(text.replace("train: builtin:capitalization", "train: data.jsonl"))
    git("add", "-A")
    git("commit", "-qm", "v1")
    (specs / "q.yaml").write_text((specs / "q.yaml").read_text().replace("batch_size: 8", "batch_size: 16"))
    result = cli("diff", "--git", "HEAD", "--markdown")
    assert result.exit_code == 0, result.output
    assert "## specc diff against HEAD" in result.output
    assert "`training.batch_size`: 8 → 16" in result.output
    assert "data.train" not in result.output                       # same file: no spurious path change
    assert not list(specs.glob(".*specc-diff*"))                   # the temporary old copy is gone
    result = cli("diff", "--git", "HEAD", "specs/q.yaml")
    assert result.exit_code == 0 and "training.batch_size: 8 → 16" in result.output
    # A broken old version names the revision in its problems.
    (specs / "bad.yaml").write_text("experiment: x\nhypothesis: {statement: s}\n")
    git("add", "-A")
    git("commit", "-qm", "bad")
    (specs / "bad.yaml").write_text(text)
    result = cli("diff", "--git", "HEAD", "specs/bad.yaml")
    assert result.exit_code == 1 and "HEAD:specs/bad.yaml" in result.output


def test_shipped_hook_and_ci_example():
    yaml = YAML(typ="safe")
    hooks = yaml.load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert any("specc compile --check" in h["entry"] for h in hooks)
    ci = yaml.load((REPO / "docs" / "ci-example.yml").read_text())
    text = (REPO / "docs" / "ci-example.yml").read_text()
    assert "specc compile --check specs/*.yaml" in text and "specc diff --git origin/main" in text
    assert "jobs" in ci and ci.get("on") or ci.get(True)
