"""The `specc` command line as a user runs it: a real subprocess, exit codes, no tracebacks, nothing written on error."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.spec_texts import FOUR_MISTAKES

REPO = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "mlx", "transformers", "peft", "bitsandbytes", "mlx_lm"}



def specc(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = shutil.which("specc", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "specc.cli"]
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", **(env or {}))
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def specc_in_process(*args: str) -> int:
    """The same entry point in this process: for checks of output, where a subprocess adds only time."""
    from specc.cli import main

    argv, sys.argv = sys.argv, ["specc", *args]
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def test_four_mistakes_four_lines_exit_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(FOUR_MISTAKES)
    proc = specc("check", str(bad))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "4 problems found; nothing was written."
    issues = lines[:-1]
    assert len(issues) == 4 and all(line.startswith(f"{bad}:") for line in issues)
    assert [line.split(":")[1] for line in issues] == ["6", "11", "13", "14"]   # file:LINE:col, in file order
    assert "did you mean 'lr'?" in proc.stderr and "did you mean 'training'?" in proc.stderr


def test_invalid_spec_writes_nothing(tmp_path):
    good, bad = tmp_path / "quickstart.yaml", tmp_path / "bad.yaml"
    shutil.copy(REPO / "specs" / "quickstart.yaml", good)
    bad.write_text(FOUR_MISTAKES)
    out = tmp_path / "generated"

    proc = specc("compile", str(good), str(bad), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert not out.exists(), "nothing may be written when any spec is invalid"


def test_invalid_spec_leaves_existing_files_alone(tmp_path, monkeypatch, capsys):
    good = tmp_path / "quickstart.yaml"
    shutil.copy(REPO / "specs" / "quickstart.yaml", good)
    out = tmp_path / "generated"
    monkeypatch.chdir(tmp_path)
    assert specc_in_process("compile", str(good), "--out", str(out)) == 0
    plan = out / "quickstart" / "plan.md"
    plan.write_text(plan.read_text() + "\nedited\n")
    before = tree(out)
    good.write_text(good.read_text().replace("max_steps: 200", "max_steps: 5"))   # now warmup (10) ≥ total steps
    capsys.readouterr()
    assert specc_in_process("compile", str(good), "--out", str(out)) == 1
    assert "warmup_steps (10) must be < total steps (5" in capsys.readouterr().err
    assert tree(out) == before, "existing files must stay unchanged"


def test_unsafe_yaml_is_refused_and_never_runs(tmp_path):
    spec = tmp_path / "evil.yaml"
    spec.write_text("experiment: !!python/object/apply:os.system ['touch CANARY']\n"
                    "base: &a [x, x, x, x, x, x, x, x]\nbomb: [*a, *a, *a, *a, *a, *a]\n")
    proc = specc("check", str(spec), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{spec}:1:13:" in proc.stderr and "tag" in proc.stderr and "aliases" in proc.stderr
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("args, code, text", [
    (["check", "no/such/spec.yaml"], 1, "file not found"),
    (["compile"], 2, "Missing argument"),
    (["no-such-command"], 2, "No such command"),
])
def test_errors_without_traceback(args, code, text):
    proc = specc(*args)
    assert proc.returncode == code and text in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_two_specs_one_experiment(tmp_path, monkeypatch, capsys):
    for name in ("a.yaml", "b.yaml"):
        shutil.copy(REPO / "specs" / "quickstart.yaml", tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert specc_in_process("check", "a.yaml", "b.yaml") == 1
    assert "experiment 'quickstart' is defined by both a.yaml and b.yaml" in capsys.readouterr().err


def test_check_reports_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert specc_in_process("check", "specs/lora-rank-sweep.yaml", "specs/quickstart.yaml") == 0
    text = capsys.readouterr().out
    assert "experiment llama32-lora-rank-sweep, 12 run(s) + 2 control" in text
    assert "experiment quickstart, 1 run(s)" in text


def test_user_text_is_not_read_as_markup(tmp_path, monkeypatch, capsys):
    """Paths and names are printed as they are: "[/x]" in a path is no rich markup (and no crash)."""
    (tmp_path / "[").mkdir()
    for name in ("[bold]a.yaml", "[/x]b.yaml"):   # the second is x]b.yaml in a directory named "["
        shutil.copy(REPO / "specs" / "quickstart.yaml", tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert specc_in_process("check", "[bold]a.yaml", "[/x]b.yaml") == 1
    assert "defined by both [bold]a.yaml and [/x]b.yaml" in capsys.readouterr().err


def test_committed_generated_matches_specs():
    """The CI check for spec PRs: generated/ is what the specs compile to.

    With a fixed hash seed that is (almost surely) not the one generated/ was written with, this also
    shows that the output does not depend on set or dict-of-set iteration order.
    """
    specs = sorted(str(p.relative_to(REPO)) for p in (REPO / "specs").glob("*.yaml"))
    proc = specc("compile", "--check", *specs, env={"PYTHONHASHSEED": "12345"})
    assert proc.returncode == 0, f"generated/ is stale; run `specc compile specs/*.yaml`\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.count("up to date") == len(specs)


def test_check_prints_a_diff_and_exits_1_when_stale(tmp_path):
    shutil.copytree(REPO / "generated" / "quickstart", tmp_path / "quickstart")
    script = tmp_path / "quickstart" / "main" / "train.sbatch"
    script.write_text(script.read_text().replace("--time=00:20:00", "--time=00:30:00"))
    before = tree(tmp_path)
    proc = specc("compile", "--check", "specs/quickstart.yaml", "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "-#SBATCH --time=00:30:00\n+#SBATCH --time=00:20:00" in proc.stdout
    assert tree(tmp_path) == before


def test_docs_schema_is_current():
    proc = specc("schema")
    assert proc.returncode == 0
    assert proc.stdout == (REPO / "docs" / "spec.schema.json").read_text(), \
        "docs/spec.schema.json is stale: run `specc schema > docs/spec.schema.json`"
    schema = json.loads(proc.stdout)
    assert schema["title"] == "specc experiment spec" and "experiment" in schema["required"]


def test_core_commands_never_import_ml_frameworks(tmp_path):
    """check, compile and schema need only the core dependencies."""
    program = f"""
import sys
from specc.cli import main
heavy = {sorted(HEAVY)!r}
for argv in (["check", "specs/quickstart.yaml", "specs/lora-rank-sweep.yaml"],
             ["compile", "specs/quickstart.yaml", "specs/lora-rank-sweep.yaml", "--out", {str(tmp_path)!r}],
             ["compile", "--check", "specs/quickstart.yaml"],
             ["schema"]):
    sys.argv = ["specc", *argv]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
    print("IMPORTED", argv[0], sorted(m for m in sys.modules if m.split(".")[0] in heavy), file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    reports = [line for line in proc.stderr.splitlines() if line.startswith("IMPORTED")]
    assert reports == ["IMPORTED check []", "IMPORTED compile []", "IMPORTED compile []", "IMPORTED schema []"]
