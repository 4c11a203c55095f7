"""What a real cluster needs, against the local clusters: job settings and setup lines that run on the node,
sweeps of mixed shapes, resubmitting what a time limit ended, and used against asked with and without sacct.

The main local cluster (scripts/local-slurm) has no accounting; `slurm_accounting_cluster` is a second one
with slurmdbd and MariaDB, so sacct answers there. Every job trains a tiny Llama on one CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.slurm_helpers import job_info, wait_for_job_done
from tests.slurm.test_submit import JOB_TIMEOUT, jobs_of, make_project, spec, steps_trained

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

SLOW_STEPS = 250          # steps of the run the time limit ends (0.6 s each at least in its first job)


def specc(*args: str, cwd: Path, check: bool = False, env: dict | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("specc", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "specc.cli"]
    proc = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, COLUMNS="250", NO_COLOR="1", **(env or {})))
    if check and proc.returncode != 0:
        raise AssertionError(f"specc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def with_conf(conf: Path):
    """Client calls of the test helpers against another cluster than the session's."""
    class _Env:
        def __enter__(self):
            self.old = os.environ.get("SLURM_CONF")
            os.environ["SLURM_CONF"] = str(conf)

        def __exit__(self, *exc):
            if self.old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = self.old
    return _Env()


@pytest.fixture(scope="module")
def project(slurm_cluster, tmp_path_factory):
    """Both experiments of the main cluster submitted at once (the cluster runs two jobs at a time)."""
    root = tmp_path_factory.mktemp("slurm-real")
    files = make_project(root)
    specs = {
        "i14-shapes": spec(root, files, "i14-shapes", steps=6, sweep={
            "matrix": {"model.lora.rank": [2, 4]}, "name": "r{model.lora.rank}", "control": True,
            "resources": [{"when": {"model.lora.rank": 4}, "set": {"time": "00:08:00", "partition": "short"}}]}),
        # One run finishes at once, the other needs 2.5 min of 0.6 s steps in a 2-minute job: the limit ends it.
        "i14-limit": spec(root, files, "i14-limit", steps=8,
                          training={"checkpoint_every": 20},
                          resources={"time": "00:02:00", "max_requeues": 0, "signal_lead_s": 10},
                          sweep={"matrix": {"training.max_steps": [8, SLOW_STEPS]}, "name": "s{training.max_steps}"}),
    }
    outputs = {}
    try:
        outputs["i14-limit"] = specc("submit", str(specs["i14-limit"]), cwd=root, check=True,
                                     env={"SPECC_SLOW_STEPS": "0.6"})
        outputs["i14-shapes"] = specc("submit", str(specs["i14-shapes"]), cwd=root, check=True)
        yield {"root": root, "files": files, "specs": specs, "submit": outputs}
    finally:
        for name in specs:
            if (root / "runs" / name / "jobs.json").exists():
                specc("cancel", name, cwd=root)


def test_a_sweep_of_two_shapes_is_two_arrays_with_their_own_time_and_controls_are_eval_only_jobs(project):
    root, out = project["root"], project["submit"]["i14-shapes"].stdout
    assert "array_1.sbatch: its own shape (partition main vs short, time 00:10:00 vs 00:08:00" in out, out
    assert "array_2.sbatch: its own shape (partition short vs main, time 00:08:00 vs 00:10:00" in out, out
    assert "control_array.sbatch: eval-only control runs" in out
    jobs = jobs_of(root, "i14-shapes")
    arrays = {run: recs[-1]["array_job_id"] for run, recs in jobs.items()}
    assert len(set(arrays.values())) == 3, arrays                     # one array per shape, the controls apart
    seen = {}
    for run, [rec] in jobs.items():
        info = wait_for_job_done(rec["job_id"], timeout=2 * JOB_TIMEOUT)
        log = (root / rec["log"]).read_text()
        assert info["JobState"] == "COMPLETED", log
        seen[run] = (info["Partition"], info["TimeLimit"])
        summary = json.loads((root / "runs/i14-shapes" / run / "summary.json").read_text())
        assert summary["status"] == "completed"
    assert seen == {"r2": ("main", "00:10:00"), "r4": ("short", "00:08:00"), "control_tiny": ("main", "00:10:00")}
    control = json.loads((root / "runs/i14-shapes/control_tiny/summary.json").read_text())
    assert control["kind"] == "control" and control["val_loss"] > 0 and control["steps"] == 0
    # No accounting on this cluster: used comes from the runs' own clocks.
    table = specc("status", "i14-shapes", cwd=root, check=True).stdout
    assert "run clock" in table and "10.0m" in table and "8.0m" in table, table


def test_a_run_its_time_limit_ended_is_resubmitted_alone_and_completes_every_step_once(project):
    root = project["root"]
    jobs = jobs_of(root, "i14-limit")
    fast, slow = jobs["s8"][0], jobs[f"s{SLOW_STEPS}"][0]
    assert wait_for_job_done(fast["job_id"], timeout=JOB_TIMEOUT)["JobState"] == "COMPLETED"
    info = wait_for_job_done(slow["job_id"], timeout=JOB_TIMEOUT)
    log = (root / slow["log"]).read_text()
    # Ended by the limit: killed at it (TIMEOUT), or checkpointed on its warning with no requeue left (exit 75).
    assert info["JobState"] == "TIMEOUT" or (info["JobState"], info["ExitCode"]) == ("FAILED", "75:0"), (info, log)
    run_dir = root / f"runs/i14-limit/s{SLOW_STEPS}"
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["status"] in ("interrupted", "running") and first["steps"] < SLOW_STEPS, first

    again = specc("submit", str(project["specs"]["i14-limit"]), "--unfinished", cwd=root, check=True)
    assert "skip s8: completed (8 steps)" in again.stdout, again.stdout
    state_word = "timed out" if info["JobState"] == "TIMEOUT" else "interrupted"
    assert f"resubmit s{SLOW_STEPS}: {state_word}" in again.stdout and "resumes from step" in again.stdout
    assert "full 1-task array" in again.stdout
    rec = jobs_of(root, "i14-limit")[f"s{SLOW_STEPS}"][-1]
    assert rec["job_id"].endswith("_1") and rec["job_id"] != slow["job_id"]          # task 1 of a new array
    assert len(jobs_of(root, "i14-limit")["s8"]) == 1                               # the finished run stays alone
    done = wait_for_job_done(rec["job_id"], timeout=2 * JOB_TIMEOUT)
    assert done["JobState"] == "COMPLETED", (root / rec["log"]).read_text()
    assert steps_trained(run_dir) == list(range(1, SLOW_STEPS + 1))                # none lost, none twice
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["restarts"]) == ("completed", SLOW_STEPS, 1)
    assert "resumed from runs/i14-limit" in (root / rec["log"]).read_text()
    nothing = specc("submit", str(project["specs"]["i14-limit"]), "--unfinished", cwd=root, check=True).stdout
    assert "nothing to resubmit" in nothing and f"skip s{SLOW_STEPS}: completed ({SLOW_STEPS} steps)" in nothing
    # The report compares what the run used with one job's limit, and suggests a --time that would have fit.
    report = specc("report", "i14-limit", "--no-plots", cwd=root, check=True).stdout
    line = next(x for x in report.splitlines() if x.strip().startswith(f"s{SLOW_STEPS}: asked 00:02:00"))
    assert "(run clock)" in line and "next time --time=" in line, report


def test_setup_lines_env_and_account_reach_the_node_and_sacct_reports_used_against_asked(
        slurm_accounting_cluster, tmp_path):
    acct = slurm_accounting_cluster
    files = make_project(tmp_path)
    activate = Path(sys.executable).parent / "activate"
    setup = ['printf "%s|%s|%s\\n" "$SLURMD_NODENAME" "$SPECC_PROOF" "$(command -v module || echo no-module)" '
             '> runs/i14-env/setup-proof.txt', 'export SPECC_FROM_SETUP="set by a setup line"']
    if activate.is_file():
        setup.append(f"source {activate}")          # an environment activated on the node, as users do
    path = spec(tmp_path, files, "i14-env", steps=6, resources={
        "account": acct.account, "env": {"SPECC_PROOF": "a b $HOME 'q'"}, "setup": setup,
        "extra_sbatch": {"comment": "issue 14"}, "mail": {"user": "nobody@example.org", "type": ["FAIL"]}})
    specc("submit", str(path), cwd=tmp_path, check=True, env=acct.env)
    [rec] = jobs_of(tmp_path, "i14-env")["main"]
    # --watch refreshes until the job has ended, then returns.
    watched = specc("status", "i14-env", "--watch", "--interval", "2", cwd=tmp_path, check=True, env=acct.env,
                    timeout=JOB_TIMEOUT + 60).stdout
    assert "refreshing every 2 s" in watched and "COMPLETED" in watched.split("refreshing every")[-1], watched
    with with_conf(acct.conf):
        info = wait_for_job_done(rec["job_id"], timeout=60)
        assert (info["JobState"], info["Account"], info["Comment"]) == ("COMPLETED", acct.account, "issue 14"), info
        assert info["MailUser"] == "nobody@example.org" and info["MailType"] == "FAIL"
        assert job_info(rec["job_id"])["Partition"] == "main"
    proof = (tmp_path / "runs/i14-env/setup-proof.txt").read_text()
    assert proof.split("|")[:2] == ["localhost", "a b $HOME 'q'"]                  # ran on the node; quoted exactly
    log = (tmp_path / rec["log"]).read_text()
    assert "completed: reached 6 steps" in log
    sacct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", rec["job_id"], "-o", "JobID,Account,State,ElapsedRaw"],
                           capture_output=True, text=True, env=dict(os.environ, **acct.env), timeout=30)
    assert sacct.stdout.split("\n")[0].split("|")[:3] == [rec["job_id"], acct.account, "COMPLETED"], sacct
    elapsed = int(sacct.stdout.split("\n")[0].split("|")[3])
    table = specc("status", "i14-env", cwd=tmp_path, check=True, env=acct.env).stdout
    assert "(sacct)" in table and "10.0m" in table, table
    report = specc("report", "i14-env", "--no-plots", cwd=tmp_path, check=True, env=acct.env).stdout
    line = next(x for x in report.splitlines() if x.strip().startswith("main: asked 00:10:00"))
    assert "(sacct)" in line and "next time --time=00:15:00" in line, report
    md = (tmp_path / "runs/i14-env/report.md").read_text()
    assert "## Used against asked (SLURM)" in md and "| sacct |" in md
    assert f"{elapsed / 600:.0%}" in md or elapsed < 60
