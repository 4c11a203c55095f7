"""Real jobs on the local one-node SLURM cluster: the behaviour specc's submit,
status and cancel rely on (signals to the batch script, requeue from a trap,
arrays, dependencies, partition limits). See docs/slurm-local.md.
"""
from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.slurm.slurm_helpers import (
    cancel,
    job_info,
    job_infos,
    sbatch,
    wait_for,
    wait_for_job_done,
    wait_for_job_state,
    wait_for_text,
)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


# A batch script that traps signals and idles in `sleep & wait`: bash only runs a
# trap once the foreground command returns, and `wait` returns at once on a signal.
TRAPPING_SCRIPT = """
    log() { echo "$* restart=${SLURM_RESTART_COUNT:-0}"; }
    trap 'log got TERM' TERM
    trap 'log got USR1; done=1' USR1
    # A child process: with --batch only the batch shell is signalled, not this.
    ( trap 'echo child got TERM' TERM; trap 'echo child got USR1' USR1
      while :; do sleep 0.2 & wait $!; done ) &
    child=$!
    disown  # no "Killed ( trap 'echo child got ..." job notice when we kill it
    log ready
    done=0
    for _ in $(seq 300); do
        [[ $done == 1 ]] && break
        sleep 0.2 & wait $!
    done
    sleep 0.5  # let a signalled child print before it is killed
    kill -9 $child
    log exiting
"""


def test_trivial_job_completes(slurm_cluster, tmp_path):
    jid = sbatch("-o", str(tmp_path / "%j.out"), "-J", "specc-trivial",
                 "--wrap", "echo hello from $SLURM_JOB_ID on $SLURM_JOB_PARTITION")
    info = wait_for_job_done(jid, timeout=30)
    assert info["JobState"] == "COMPLETED"
    assert info["ExitCode"] == "0:0"
    assert info["Partition"] == slurm_cluster.default_partition
    assert (tmp_path / f"{jid}.out").read_text() == f"hello from {jid} on debug\n"


def test_failing_job_is_failed_with_exit_code(slurm_cluster, tmp_path):
    jid = sbatch("-o", str(tmp_path / "%j.out"), "--wrap", "exit 3")
    info = wait_for_job_done(jid, timeout=30)
    assert (info["JobState"], info["Reason"], info["ExitCode"]) == ("FAILED", "NonZeroExitCode", "3:0")


def test_partitions_and_limits(slurm_cluster, tmp_path):
    # `main` allows multi-day jobs; `debug` (30 min) rejects them at submit time
    # because the cluster sets EnforcePartLimits=ALL.
    jid = sbatch("-p", "main", "--time=2-00:00:00", "-o", str(tmp_path / "%j.out"), "--wrap", "true")
    info = wait_for_job_done(jid, timeout=30)
    assert (info["JobState"], info["Partition"], info["TimeLimit"]) == ("COMPLETED", "main", "2-00:00:00")
    for bad, err in [(["-p", "debug", "--time=01:00:00"], "time limit"),
                     (["--mem=100000G"], "Memory specification"),
                     (["-p", "nope"], "invalid partition"),
                     (["-c", "64"], "More processors requested")]:
        with pytest.raises(RuntimeError, match=err):
            sbatch(*bad, "--wrap", "true")


def test_scancel_batch_delivers_term_and_usr1_to_the_trap(slurm_cluster, tmp_path):
    out = tmp_path / "sig.out"
    script = write_script(tmp_path / "sig.sh", TRAPPING_SCRIPT)
    jid = sbatch("-o", str(out), str(script))
    try:
        wait_for_text(out, "ready", timeout=30)
        # SIGTERM is caught: the job keeps running (slurmstepd still logs a
        # misleading "*** JOB n ... CANCELLED AT ..." line into the output).
        subprocess.run(["scancel", "--signal=TERM", "--batch", jid], check=True)
        wait_for_text(out, "got TERM", timeout=15)
        assert job_info(jid)["JobState"] == "RUNNING"
        subprocess.run(["scancel", "--signal=USR1", "--batch", jid], check=True)
        text = wait_for_text(out, "exiting", timeout=15)
        info = wait_for_job_done(jid, timeout=15)
    finally:
        cancel(jid)
    assert "got USR1" in text
    assert "child got" not in text  # --batch: only the batch shell itself
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0")


def test_scancel_full_signals_children_too(slurm_cluster, tmp_path):
    out = tmp_path / "full.out"
    script = write_script(tmp_path / "full.sh", TRAPPING_SCRIPT)
    jid = sbatch("-o", str(out), str(script))
    try:
        wait_for_text(out, "ready", timeout=30)
        subprocess.run(["scancel", "--signal=USR1", "--full", jid], check=True)
        text = wait_for_text(out, "exiting", timeout=15)
        wait_for_job_done(jid, timeout=15)
    finally:
        cancel(jid)
    assert "got USR1" in text and "child got USR1" in text


def test_timed_signal_arrives_before_time_limit(slurm_cluster, tmp_path):
    # --signal=B:USR1@59 with a 1 min limit: slurmctld checks limits every ~30 s,
    # so the signal comes at the first check after start (seen: ~20 s).
    out = tmp_path / "timed.out"
    script = write_script(tmp_path / "timed.sh", TRAPPING_SCRIPT)
    jid = sbatch("--time=1", "--signal=B:USR1@59", "-o", str(out), str(script))
    try:
        text = wait_for_text(out, "exiting", timeout=55)
        info = wait_for_job_done(jid, timeout=15)
    finally:
        cancel(jid)
    assert "got USR1" in text and "child got" not in text
    assert info["JobState"] == "COMPLETED"


def test_requeue_from_trap_reruns_job_and_appends_log(slurm_cluster, tmp_path):
    out = tmp_path / "requeue.out"
    script = write_script(tmp_path / "requeue.sh", """
        echo "start restart=${SLURM_RESTART_COUNT:-unset}"
        if [[ -n $SLURM_RESTART_COUNT ]]; then echo "resumed"; exit 0; fi
        requeue() {
            echo "got USR1, requeueing"
            scontrol requeue "$SLURM_JOB_ID" && echo "requeue ok"
            exit 0   # leave promptly; slurmctld kills the old run anyway
        }
        trap requeue USR1
        echo ready
        for _ in $(seq 300); do sleep 0.2 & wait $!; done
    """)
    jid = sbatch("--open-mode=append", "--signal=B:USR1@30", "-o", str(out), str(script))
    try:
        wait_for_text(out, "ready", timeout=30)
        subprocess.run(["scancel", "--signal=USR1", "--batch", jid], check=True)
        wait_for_text(out, "requeue ok", timeout=15)
        # Requeued: PENDING (Reason=BeginTime) for cred_expire (10 s), then runs again.
        pending = wait_for_job_state(jid, "PENDING", timeout=15)
        assert pending["Restarts"] == "1"
        info = wait_for(lambda: (i := job_info(jid)) and i["JobState"] == "COMPLETED" and i,
                        timeout=45, what="requeued job to complete")
    finally:
        cancel(jid)
    assert info["Restarts"] == "1"
    lines = out.read_text().splitlines()
    # --open-mode=append kept the first run's lines (the default truncates).
    assert lines[0] == "start restart=unset"
    assert "requeue ok" in lines
    assert "start restart=1" in lines and lines[-1] == "resumed"


def test_job_array_with_throttle(slurm_cluster, tmp_path):
    jid = sbatch("--array=0-2%2", "-o", str(tmp_path / "%A_%a.out"), "--wrap",
                 "echo $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT "
                 "$(date +%s.%N); sleep 2; date +%s.%N")
    assert re.fullmatch(r"\d+", jid)  # --parsable prints the array's job id only

    def all_done():
        infos = job_infos(jid)  # one record per task once they are split off
        ids = {i.get("ArrayTaskId") for i in infos}
        return infos if ids == {"0", "1", "2"} and all(
            i["JobState"] == "COMPLETED" for i in infos) else None

    infos = wait_for(all_done, timeout=45, what=f"array {jid} to complete")
    assert {i["ArrayJobId"] for i in infos} == {jid}
    assert all(i.get("ArrayTaskThrottle") == "2" for i in infos)
    spans = []
    for task in range(3):
        first, end = (tmp_path / f"{jid}_{task}.out").read_text().splitlines()
        array_id, task_id, count, start = first.split()
        assert (array_id, task_id, count) == (jid, str(task), "3")
        spans.append((float(start), float(end)))
    # %2: never more than two tasks at once.
    for t, _ in spans:
        assert sum(s <= t < e for s, e in spans) <= 2


def test_dependency_afterok_on_failed_job_is_never_satisfied(slurm_cluster, tmp_path):
    first = sbatch("-o", str(tmp_path / "first.out"), "--wrap", "sleep 1; exit 3")
    stuck = sbatch(f"--dependency=afterok:{first}", "-o", str(tmp_path / "stuck.out"),
                   "--wrap", "echo ran")
    killed = sbatch(f"--dependency=afterok:{first}", "--kill-on-invalid-dep=yes",
                    "-o", str(tmp_path / "killed.out"), "--wrap", "echo ran")
    try:
        info = job_info(stuck)
        assert info["Dependency"] == f"afterok:{first}(unfulfilled)"
        assert wait_for_job_done(first, timeout=30)["JobState"] == "FAILED"
        # Without --kill-on-invalid-dep the dependent stays PENDING forever.
        info = wait_for(lambda: (i := job_info(stuck)) and i["Reason"] == "DependencyNeverSatisfied" and i,
                        timeout=20, what="DependencyNeverSatisfied")
        assert info["JobState"] == "PENDING"
        assert info["Dependency"] == f"afterok:{first}(failed)"
        info = wait_for_job_done(killed, timeout=20)
        assert (info["JobState"], info["Reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
    finally:
        cancel(stuck, killed)
    assert wait_for_job_done(stuck, timeout=20)["JobState"] == "CANCELLED"
    assert not (tmp_path / "stuck.out").exists() and not (tmp_path / "killed.out").exists()


def test_dependency_afterok_runs_after_success(slurm_cluster, tmp_path):
    first = sbatch("-o", str(tmp_path / "first.out"), "--wrap", "sleep 1")
    second = sbatch(f"--dependency=afterok:{first}", "-o", str(tmp_path / "second.out"),
                    "--wrap", "echo ran")
    assert wait_for_job_done(second, timeout=40)["JobState"] == "COMPLETED"
    assert (tmp_path / "second.out").read_text() == "ran\n"
