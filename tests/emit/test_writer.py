"""Emitting generated/<experiment>/: deterministic files, golden copies, and `--check`."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specc.emit.writer import json_text, render_experiment, stale_diff, write_files
from specc.plan.runs import plan_experiment
from specc.spec.validate import load_spec

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("SPECC_UPDATE_GOLDEN") == "1"
TIMESTAMP = re.compile(r"\b(19|20)\d\d-\d\d-\d\d([T ]\d\d:\d\d)?|\b\d\d:\d\d:\d\d\.\d+")


def render(spec: Path) -> dict[str, str]:
    loaded = load_spec(spec)
    return render_experiment(loaded, plan_experiment(loaded))


def cli(*args: str) -> int:
    from specc.cli import main

    argv, sys.argv = sys.argv, ["specc", *args]
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)   # artifacts name spec and data paths relative to the repository root


# --- golden files ---------------------------------------------------------------------------------

def _compare_golden(actual: dict[str, str], golden_root: Path) -> None:
    if UPDATE:
        for rel, text in actual.items():
            (golden_root / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden_root / rel).write_text(text, encoding="utf-8")
        pytest.skip(f"golden files updated under {golden_root}")
    for rel, text in actual.items():
        path = golden_root / rel
        assert path.is_file(), f"no golden file {path}; create it with SPECC_UPDATE_GOLDEN=1 pytest {__file__}"
        assert text == path.read_text(encoding="utf-8"), (
            f"{rel} differs from its golden copy {path}.\nIf the change is intended, update the golden files with\n"
            f"  SPECC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest {Path(__file__).relative_to(REPO)}\n"
            "and review the diff in the PR.")


def test_quickstart_matches_its_golden_copy(in_repo):
    files = render(Path("specs/quickstart.yaml"))
    # the quickstart has a control run (the base model, scored on the same task): its own config and job
    assert sorted(files) == ["control_tiny/config.json", "control_tiny/train.sbatch", "main/config.json",
                             "main/schedule.csv", "main/train.sbatch", "plan.md"]
    _compare_golden(files, GOLDEN / "quickstart")
    if not UPDATE:
        assert {p.relative_to(GOLDEN / "quickstart").as_posix() for p in (GOLDEN / "quickstart").rglob("*")
                if p.is_file()} == set(files), "a stale golden file: regenerate with SPECC_UPDATE_GOLDEN=1"


def test_sweep_train_script_matches_its_golden_copy(in_repo):
    files = render(Path("specs/lora-rank-sweep.yaml"))
    _compare_golden({"1B_rank16/train.sbatch": files["1B_rank16/train.sbatch"]}, GOLDEN / "llama32-lora-rank-sweep")


# --- determinism ----------------------------------------------------------------------------------

def test_compiling_twice_gives_identical_bytes(in_repo, tmp_path):
    specs = sorted(str(p.relative_to(REPO)) for p in (REPO / "specs").glob("*.yaml"))
    assert cli("compile", *specs, "--out", str(tmp_path / "a")) == 0
    assert cli("compile", *specs, "--out", str(tmp_path / "b")) == 0
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    assert len(a) > 50
    before = snapshot(tmp_path / "a")
    assert cli("compile", *specs, "--out", str(tmp_path / "a")) == 0
    assert snapshot(tmp_path / "a") == before   # unchanged files are not rewritten (mtimes kept)


def test_no_timestamps_in_artifacts(in_repo):
    for spec in sorted((REPO / "specs").glob("*.yaml")):
        for rel, text in render(spec.relative_to(REPO)).items():
            assert not TIMESTAMP.search(text), f"{spec.name}: {rel} holds a timestamp: {TIMESTAMP.search(text)[0]}"


def test_config_json_is_the_fully_resolved_trainer_config(in_repo):
    config = json.loads(render(Path("specs/quickstart.yaml"))["main/config.json"])
    assert config["source"] == "specs/quickstart.yaml" and config["output_dir"] == "runs/quickstart/main"
    assert config["training"]["total_steps"] == 200 and config["schedule"]["total_steps"] == 200
    assert config["data"]["max_length"] == 128 and config["model"]["lora"]["rank"] == 8
    # Defaults the spec left out are written out in full.
    assert config["training"]["early_stopping"]["grad_spike_patience"] == 3 and config["model"]["dtype"] == "auto"
    assert config["resources"]["partition"] == "debug" and config["provenance"]["training.batch_size"] == "spec"


def test_spec_relative_data_paths_become_repo_relative(tmp_path, monkeypatch, write_spec):
    spec = write_spec({"data": {"train": "data/train.jsonl", "valid": "builtin:capitalization"}},
                      directory=tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    config = json.loads(render(Path("specs/spec.yaml"))["main/config.json"])
    assert spec.is_file() and config["data"]["train"] == "specs/data/train.jsonl"
    assert config["data"]["valid"] == "builtin:capitalization"


# --- writing and --check ------------------------------------------------------------------------------

def test_check_passes_when_current_and_writes_nothing(in_repo, tmp_path, capsys):
    out = tmp_path / "gen"
    assert cli("compile", "specs/quickstart.yaml", "--out", str(out)) == 0
    before = snapshot(out)
    assert cli("compile", "specs/quickstart.yaml", "--out", str(out), "--check") == 0
    assert "up to date" in capsys.readouterr().out
    assert snapshot(out) == before


def test_check_fails_with_a_diff_when_a_file_was_edited(in_repo, tmp_path, capsys):
    out = tmp_path / "gen"
    assert cli("compile", "specs/quickstart.yaml", "--out", str(out)) == 0
    plan = out / "quickstart" / "plan.md"
    plan.write_text(plan.read_text().replace("## Hypothesis", "## Hypothesis (edited by hand)"))
    before = snapshot(out)
    capsys.readouterr()
    assert cli("compile", "specs/quickstart.yaml", "--out", str(out), "--check") == 1
    captured = capsys.readouterr()
    assert f"--- a/{plan.as_posix()}" in captured.out and f"+++ b/{plan.as_posix()}" in captured.out
    assert "-## Hypothesis (edited by hand)\n+## Hypothesis\n" in captured.out
    assert "stale" in captured.err
    assert snapshot(out) == before   # --check writes nothing


def test_check_fails_on_a_stale_extra_file(in_repo, tmp_path, capsys):
    out = tmp_path / "gen"
    assert cli("compile", "specs/quickstart.yaml", "--out", str(out)) == 0
    extra = out / "quickstart" / "old_run" / "config.json"
    extra.parent.mkdir()
    extra.write_text("{}\n")
    capsys.readouterr()
    assert cli("compile", "specs/quickstart.yaml", "--out", str(out), "--check") == 1
    diff = capsys.readouterr().out
    assert f"--- a/{extra.as_posix()}" in diff and "+++ /dev/null" in diff and "-{}" in diff
    assert extra.exists()
    # A real compile removes what the spec no longer produces, and empty directories with it.
    assert cli("compile", "specs/quickstart.yaml", "--out", str(out)) == 0
    assert not extra.parent.exists()
    assert cli("compile", "specs/quickstart.yaml", "--out", str(out), "--check") == 0


def test_check_fails_when_nothing_was_generated(in_repo, tmp_path, capsys):
    assert cli("compile", "specs/quickstart.yaml", "--out", str(tmp_path / "gen"), "--check") == 1
    assert "+++ b/" in capsys.readouterr().out and not (tmp_path / "gen").exists()


def test_write_files_reports_what_it_did(tmp_path):
    root = tmp_path / "exp"
    result = write_files(root, {"a.txt": "1\n", "run/x.sbatch": "#!/bin/bash\n"})
    assert [p.relative_to(root).as_posix() for p in result.written] == ["a.txt", "run/x.sbatch"]
    assert os.access(root / "run" / "x.sbatch", os.X_OK) and not os.access(root / "a.txt", os.X_OK)
    result = write_files(root, {"a.txt": "2\n"})
    assert (len(result.written), result.unchanged, [p.name for p in result.removed]) == (1, 0, ["x.sbatch"])
    assert sorted(p.name for p in root.rglob("*")) == ["a.txt"]   # no temporary files, no empty directories
    assert stale_diff(root, {"a.txt": "2\n"}) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4),
    max_leaves=20)


@given(json_values)
@settings(max_examples=100, deadline=None)
def test_json_text_is_json_dumps(value):
    assert json_text(value) == json.dumps(value, indent=2, ensure_ascii=False)


# --- no control characters in reviewer artifacts ------------------------------------------------------

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\\u00[01][0-9a-fA-F]")   # raw, or JSON-escaped


@pytest.mark.parametrize("spec", sorted((REPO / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_generated_files_hold_no_control_characters(spec, in_repo):
    """A folded block (`>`, the quickstart's own hypothesis) once put BEL into config.json, plan.md and report.md."""
    for rel, text in render(spec).items():
        bad = CONTROL.search(text)
        assert bad is None, f"{rel}: control character {bad.group()!r} at offset {bad.start()}"


def test_folded_and_literal_blocks_keep_their_meaning(write_spec, plan_spec):
    spec = write_spec(text="""experiment: t
hypothesis:
  statement: >
    one two
    three

    next paragraph
  falsified_if: |
    line one
    line two
model: {path: /models/base, size: 1B}
data: {train: /data/train.jsonl, valid: /data/valid.jsonl}
training: {max_steps: 100, batch_size: 4, lr: 1.0e-4, schedule: {kind: cosine, warmup_steps: 10}}
resources: {cluster: local, partition: debug, time: "00:20:00"}
""")
    h = plan_spec(spec).spec.hypothesis
    assert h.statement == "one two three\nnext paragraph\n"
    assert h.falsified_if == "line one\nline two\n"
