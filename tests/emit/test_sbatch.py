"""sbatch safety: flags are data, values are validated and quoted, scripts parse and never run injected text."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from specc.emit.sbatch import UnsafeValue, job_flags, parse_sbatch_lines, q, render_flags, safe
from specc.emit.writer import render_experiment
from specc.errors import SpecError, UserError
from specc.plan.runs import plan_experiment
from specc.spec.model import MEM, SLUG
from specc.spec.validate import load_spec

REPO = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash")
HOSTILE_EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each example of the end-to-end test runs four scripts in a real bash: fewer of them.
RUN_EXAMPLES = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONTROL = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f"]
# Pieces of strings that would do harm if a shell ever read them unquoted.
PIECES = CONTROL + ["'", '"', "$(touch CANARY)", "`touch CANARY`", ";", " ", "touch CANARY", "&&", "|", ">", "<", "\\",
                    "#", "*", "?", "~", "!", "$HOME", "${IFS}", "%", "=", "-", "--", "{", "}", "[", "]", "a", "Z9", "é"]
hostile = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join)
printable_hostile = st.lists(st.sampled_from([p for p in PIECES if p not in CONTROL]), min_size=1, max_size=6).map("".join)


# --- the generated scripts -------------------------------------------------------------------------

@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_every_committed_script_passes_bash_n():
    scripts = sorted((REPO / "generated").rglob("*.sbatch"))
    assert len(scripts) > 20
    for script in scripts:
        proc = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


def test_committed_scripts_parse_into_single_word_flags():
    for script in (REPO / "generated").rglob("*.sbatch"):
        flags = dict(parse_sbatch_lines(script.read_text()))
        assert {"job-name", "partition", "time", "mem", "output", "signal"} <= set(flags), script


def test_sweep_array_script():
    """The rank sweep is two job shapes (sweep.resources gives the 3B runs 8 h): one array each, and the control
    runs are eval-only jobs of their own (issue 14), not GPU-hour tasks of the training arrays."""
    root = REPO / "generated" / "llama32-lora-rank-sweep"
    arrays = {name: (root / f"{name}.sbatch").read_text() for name in ("array_1", "array_2")}
    flags = {name: dict(parse_sbatch_lines(text)) for name, text in arrays.items()}
    assert [flags[n]["array"] for n in arrays] == ["0-5%4", "0-5%4"]
    assert (flags["array_1"]["time"], flags["array_2"]["time"]) == ("04:00:00", "08:00:00")
    assert all(f["output"] == "runs/llama32-lora-rank-sweep/logs/%x-%A_%a.out" for f in flags.values())
    assert arrays["array_1"].count("/config.json") == 6 and "1B_rank4/config.json" in arrays["array_1"]
    assert arrays["array_2"].count("/config.json") == 6 and "3B_rank128/config.json" in arrays["array_2"]
    assert not any("control_" in text for text in arrays.values())
    controls = [(root / f"control_array_{k}.sbatch").read_text() for k in (1, 2)]
    control_flags = [dict(parse_sbatch_lines(c)) for c in controls]
    assert all(f["time"] == "00:30:00" and f["array"] == "0-0%4" for f in control_flags)
    assert "control_1B/config.json" in controls[0] and "control_3B/config.json" in controls[1]


# --- the primitives -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a\nb", "a\rb", "tab\there", "nul\x00", "esc\x1b[0m", "del\x7f"])
def test_safe_rejects_control_characters(value):
    with pytest.raises(UnsafeValue, match="control characters"):
        safe(value)
    assert issubclass(UnsafeValue, UserError)   # the CLI prints it without a traceback


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30))
@settings(max_examples=30, deadline=None)
def test_render_then_parse_round_trips(value):
    flags = [("job-name", value), ("partition", "gpu"), ("requeue", "")]
    assert parse_sbatch_lines("#!/bin/bash\n" + "\n".join(render_flags(flags)) + "\necho hi\n") == flags


def test_render_flags_rejects_bad_flag_names():
    with pytest.raises(UnsafeValue):
        render_flags([("partition\n#SBATCH --x", "a")])
    with pytest.raises(UnsafeValue):
        render_flags([("Partition", "a")])


def test_parse_stops_at_the_first_command():
    text = "#!/bin/bash\n# comment\n#SBATCH --time=01:00:00\n\necho x\n#SBATCH --partition=late\n"
    assert parse_sbatch_lines(text) == [("time", "01:00:00")]


def test_q_quotes_for_the_shell():
    assert q("plain-value_1") == "plain-value_1"
    assert q("a b; $(touch CANARY)") == "'a b; $(touch CANARY)'"


# --- hostile names through a custom catalog, end to end -----------------------------------------------

def _yaml_str(value: str) -> str:
    return json.dumps(value)   # a JSON string is a valid YAML double-quoted scalar


def _write_experiment(root: Path, cluster: str, partition: str, qos: str, gpu_type: str, account: str = "acct",
                      constraint: str = "a100&ib", mail_user: str = "me@example.org", env_value: str = "v",
                      comment: str = "c", setup: str = "echo ready") -> Path:
    c, p, qq, g = map(_yaml_str, (cluster, partition, qos, gpu_type))
    a, con, mu, ev, cm, su = map(_yaml_str, (account, constraint, mail_user, env_value, comment, setup))
    (root / "clusters.yaml").write_text(
        f"clusters:\n  {c}:\n    partitions:\n"
        f"      {p}: {{max_time: \"1-00:00:00\", gpus_per_node: 4, gpu_type: {g}, cpus_per_node: 8, mem_gb: 64,"
        f" nodes: 2, starts_fast: true}}\n"
        f"    qos:\n      {qq}: {{max_time: \"1-00:00:00\"}}\n"
        f"    gpu_types:\n      {g}: {{memory_gb: 80}}\n"
        f"    defaults: {{env: {{SPECC_TEST_DEFAULT: {cm}}}, extra_sbatch: {{wckey: {cm}}}}}\n", encoding="utf-8")
    spec = root / "hostile.yaml"
    spec.write_text(
        "experiment: hostile\nhypothesis: {statement: s}\nmodel: {path: /m, size: 1B}\n"
        "data: {train: /d, valid: /v}\ntraining: {max_steps: 50, batch_size: 2, grad_accum: 1}\n"
        f"resources: {{cluster: {c}, partition: {p}, qos: {qq}, gpus: 2, gpu_type: {g}, cpus: 4, mem: 16G,"
        f" time: \"01:00:00\", account: {a}, constraint: {con}, mail: {{user: {mu}}}, env: {{SPECC_TEST_VALUE: {ev}}},"
        f" extra_sbatch: {{comment: {cm}}}, setup: [{su}]}}\n"
        f"stages: {{test: {{max_steps: 5, time: \"00:10:00\", partition: {p}}}}}\n"
        "sweep: {matrix: {model.lora.rank: [4, 8]}, name: \"r{model.lora.rank}\"}\n", encoding="utf-8")
    return spec


def _stub_path(root: Path) -> str:
    stubs = root / "stubs"
    stubs.mkdir()
    for name in ("srun", "scontrol", "specc", "torchrun", "sbatch"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    return f"{stubs}{os.pathsep}/usr/bin{os.pathsep}/bin"


def _cli(*args: str) -> int:
    from specc.cli import main

    argv = sys.argv
    sys.argv = ["specc", *args]
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


@HOSTILE_EXAMPLES
@given(names=st.lists(printable_hostile, min_size=9, max_size=9), field=st.integers(0, 8),
       control=st.sampled_from(CONTROL), at=st.integers(0, 6))
def test_names_with_control_characters_are_rejected(names, field, control, at):
    """(a) A control character in any name that reaches a script is an error at its line; nothing is written."""
    names[field] = names[field][:at] + control + names[field][at:]
    with tempfile.TemporaryDirectory(prefix="specc-hostile-") as tmp:
        spec = _write_experiment(Path(tmp), *names)
        with pytest.raises(SpecError) as info:
            plan_experiment(load_spec(spec))
        assert info.value.issues
        assert all("control characters" in i.message and i.line > 1 for i in info.value.issues)
        out = Path(tmp) / "generated"
        assert _cli("compile", str(spec), "--out", str(out)) == 1
        assert not out.exists()


# Runs each script as SLURM would, with fake srun/scontrol/specc/torchrun on PATH.
DRIVER = """set -u
for script in "$@"; do
  bash -n "$script" || { echo "bash -n failed: $script" >&2; exit 10; }
  bash "$script" >/dev/null || { echo "exit $?: $script" >&2; exit 11; }
done
"""


@pytest.mark.skipif(BASH is None, reason="needs bash")
@RUN_EXAMPLES
@given(cluster=printable_hostile, partition=printable_hostile, qos=printable_hostile, gpu_type=printable_hostile,
       account=printable_hostile, constraint=printable_hostile, mail_user=printable_hostile,
       env_value=printable_hostile, comment=printable_hostile)
def test_hostile_names_never_run(cluster, partition, qos, gpu_type, account, constraint, mail_user, env_value, comment):
    """(b) Quotes, $(), backticks, ; and spaces in names never run; (c) #SBATCH reads back exactly what was given."""
    with tempfile.TemporaryDirectory(prefix="specc-hostile-") as tmp:
        root = Path(tmp)
        spec = _write_experiment(root, cluster, partition, qos, gpu_type, account, constraint, mail_user, env_value,
                                 comment)
        out = root / "generated"
        assert _cli("compile", str(spec), "--out", str(out)) == 0
        loaded = load_spec(spec)
        plan = plan_experiment(loaded)
        scripts = sorted(out.rglob("*.sbatch"))
        assert [s.relative_to(out / "hostile").as_posix() for s in scripts] == [
            "array.sbatch", "r4/test.sbatch", "r4/train.sbatch", "r8/test.sbatch", "r8/train.sbatch",
            "test_array.sbatch"]

        env = {"PATH": _stub_path(root), "HOME": tmp, "LC_ALL": "C", "SLURM_SUBMIT_DIR": tmp, "SLURM_JOB_ID": "7",
               "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1"}
        distinct = [s for s in scripts if "r8" not in s.parts]   # r8's scripts differ from r4's only in names
        run = subprocess.run([BASH, "-c", DRIVER, "driver", *map(str, distinct)], cwd=root, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert not list(root.rglob("CANARY")), "a script ran injected text"

        for script in scripts:
            rel = script.relative_to(out / "hostile").as_posix()
            flags = parse_sbatch_lines(script.read_text(encoding="utf-8"))
            parsed = dict(flags)
            assert (parsed["partition"], parsed["qos"], parsed["gres"]) == (partition, qos, f"gpu:{gpu_type}:2")
            assert (parsed["account"], parsed["constraint"], parsed["mail-user"], parsed["comment"]) == (
                account, constraint, mail_user, comment)
            # The exported value is exactly the spec's, whatever it holds.
            [export] = [line for line in script.read_text(encoding="utf-8").splitlines()
                        if line.startswith("export SPECC_TEST_VALUE=")]
            seen = subprocess.run([BASH, "-c", f'{export}\nprintf %s "$SPECC_TEST_VALUE"'], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=10)
            assert seen.stdout == env_value
            # The cluster's defaults (the catalog) reach the script the same way.
            [default] = [line for line in script.read_text(encoding="utf-8").splitlines()
                         if line.startswith("export SPECC_TEST_DEFAULT=")]
            seen = subprocess.run([BASH, "-c", f'{default}\nprintf %s "$SPECC_TEST_DEFAULT"'], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=10)
            assert seen.stdout == comment and parsed["wckey"] == comment
            stage = "test" if "test" in script.name else None
            suffix = ".test" if stage else ""
            if "/" in rel:
                run_plan = next(r for r in plan.runs if rel.startswith(f"{r.name}/"))
                expected = job_flags(run_plan, stage=stage, job_name=f"hostile.{run_plan.name}{suffix}",
                                     log=f"runs/hostile/logs/{run_plan.name}{suffix}-%j.out")
                assert flags == expected
            else:
                assert (parsed["array"], parsed["job-name"]) == ("0-1", "hostile" + suffix)
        files = render_experiment(loaded, plan)
        assert all(files[rel] == (out / "hostile" / rel).read_text(encoding="utf-8") for rel in files)


@HOSTILE_EXAMPLES
@given(name=hostile)
def test_hostile_experiment_names_are_rejected(name):
    assume(not SLUG.match(name))
    with tempfile.TemporaryDirectory(prefix="specc-hostile-") as tmp:
        spec = Path(tmp) / "s.yaml"
        spec.write_text(f"experiment: {_yaml_str(name)}\nhypothesis: {{statement: s}}\nmodel: {{path: /m}}\n"
                        "data: {train: /d}\ntraining: {max_steps: 10}\n", encoding="utf-8")
        with pytest.raises(SpecError) as info:
            load_spec(spec)
        assert [(i.path, i.line) for i in info.value.issues] == [("experiment", 1)]


@HOSTILE_EXAMPLES
@given(mem=hostile)
def test_hostile_mem_is_rejected(mem):
    assume(not MEM.match(mem))
    with tempfile.TemporaryDirectory(prefix="specc-hostile-") as tmp:
        spec = Path(tmp) / "s.yaml"
        spec.write_text("experiment: e\nhypothesis: {statement: s}\nmodel: {path: /m}\ndata: {train: /d}\n"
                        f"training: {{max_steps: 10}}\nresources: {{mem: {_yaml_str(mem)}}}\n", encoding="utf-8")
        with pytest.raises(SpecError) as info:
            load_spec(spec)
        assert [(i.path, i.line) for i in info.value.issues] == [("resources.mem", 6)]


@pytest.mark.parametrize("size", ["a b", "x;touch CANARY", "$(touch CANARY)", "`id`", "a\nb", "'"])
def test_hostile_run_names_are_rejected(write_spec, spec_problems, size):
    issues = spec_problems(write_spec({"model": {"size": size}, "sweep": {"matrix": {"model.lora.rank": [4]},
                                                                          "name": "{model.size}_r{model.lora.rank}"}}))
    assert all(i.path == "sweep.name" and "is not a slug" in i.message for i in issues)


def test_spec_path_with_a_newline_never_reaches_a_script(tmp_path):
    spec = tmp_path / "evil\ntouch CANARY\n.yaml"
    shutil.copy(REPO / "specs" / "quickstart.yaml", spec)
    out = tmp_path / "out"
    assert _cli("compile", str(spec), "--out", str(out)) == 1
    assert not out.exists() and not (tmp_path / "CANARY").exists()


# --- the job's environment: setup lines, variables, extra sbatch options --------------------------------

@pytest.mark.skipif(BASH is None, reason="needs bash")
@HOSTILE_EXAMPLES
@given(text=printable_hostile)
def test_a_failing_setup_line_ends_the_job_and_its_text_is_only_echoed(text):
    """Setup lines are the spec author's code and run as written; the report of a failing one never runs its text."""
    assume("\\" not in text[-1:])
    with tempfile.TemporaryDirectory(prefix="specc-hostile-") as tmp:
        root = Path(tmp)
        spec = _write_experiment(root, "c", "p", "q", "g", setup=f"false # {text}")
        out = root / "generated"
        assert _cli("compile", str(spec), "--out", str(out)) == 0
        script = out / "hostile" / "r4" / "train.sbatch"
        assert f"\nfalse # {text}\n" in script.read_text(encoding="utf-8")        # verbatim, on its own line
        env = {"PATH": _stub_path(root), "HOME": tmp, "LC_ALL": "C", "SLURM_SUBMIT_DIR": tmp, "SLURM_JOB_ID": "7"}
        proc = subprocess.run([BASH, str(script)], cwd=root, env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and f"specc: setup line 1 failed (exit 1): false # {text}" in proc.stdout
        assert not list(root.rglob("CANARY"))


@pytest.mark.parametrize("line, problem", [
    ("echo 'open", "is not a complete shell command"),
    ("cat <<EOF", "is not a complete shell command"),
    ("module load cuda \\", "ends with a backslash"),
    ("a\nb", "control characters"),
    ("tab\there", "control characters"),
    ("", "empty"),
])
def test_setup_lines_must_be_whole_commands(tmp_path, line, problem):
    spec = _write_experiment(tmp_path, "c", "p", "q", "g", setup=line)
    out = tmp_path / "generated"
    try:
        files = render_experiment(load_spec(spec), plan_experiment(load_spec(spec)))
    except (SpecError, UserError) as exc:
        assert problem in str(exc) or any(problem in i.message for i in getattr(exc, "issues", []))
    else:
        raise AssertionError(f"compiled a bad setup line: {files['r4/train.sbatch']}")
    assert _cli("compile", str(spec), "--out", str(out)) == 1 and not out.exists()


@HOSTILE_EXAMPLES
@given(name=hostile)
def test_hostile_env_names_and_sbatch_options_are_rejected(name):
    assume(not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name))
    for section in ("env", "extra_sbatch"):
        with tempfile.TemporaryDirectory(prefix="specc-hostile-") as tmp:
            spec = Path(tmp) / "s.yaml"
            spec.write_text("experiment: e\nhypothesis: {statement: s}\nmodel: {path: /m}\ndata: {train: /d}\n"
                            f"training: {{max_steps: 10}}\nresources: {{{section}: {{{_yaml_str(name)}: x}}}}\n",
                            encoding="utf-8")
            with pytest.raises(SpecError) as info:
                load_spec(spec)
            assert [i.line for i in info.value.issues] == [6]


@pytest.mark.parametrize("section, key, message", [
    ("env", "PATH", "cannot be set here"), ("env", "SLURM_JOB_ID", "cannot be set here"),
    ("env", "SPECC", "cannot be set here"), ("extra_sbatch", "time", "set by specc from resources.time"),
    ("extra_sbatch", "gress-flags", "did you mean 'gres-flags'"), ("extra_sbatch", "wrap", "set by specc itself"),
])
def test_reserved_names_are_rejected_with_a_reason(tmp_path, section, key, message):
    spec = tmp_path / "s.yaml"
    spec.write_text("experiment: e\nhypothesis: {statement: s}\nmodel: {path: /m}\ndata: {train: /d}\n"
                    f"training: {{max_steps: 10}}\nresources: {{{section}: {{{key}: x}}}}\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert message in info.value.issues[0].message and info.value.issues[0].line == 6
