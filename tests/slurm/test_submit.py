"""`specc submit`, `status` and `cancel` against the real local SLURM cluster (scripts/local-slurm).

Every experiment trains a tiny random Llama (tests/tiny_llama.py) on a small JSONL task for a
few steps, on one CPU. The module fixture submits all of them at once, so the cluster (2 CPUs) runs two
jobs at a time while the tests wait on their own experiment; the preemption test interrupts its job
three ways (SIGTERM to the batch shell, SIGUSR1 to the batch shell, `scontrol requeue`) and checks
that every step is trained exactly once.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.slurm.slurm_helpers import job_info, run as slurm_run, wait_for, wait_for_job_done

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 420          # one job on a loaded 2-CPU machine: python + torch start-up dominates
PREEMPT_STEPS = 40


def specc(*args: str, cwd: Path, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("specc", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "specc.cli"]
    proc = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200", NO_COLOR="1", **(env or {})))
    if check and proc.returncode != 0:
        raise AssertionError(f"specc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_project(root: Path) -> dict[str, Path]:
    from tests.tiny_llama import make_tiny_llama

    model = make_tiny_llama(root / "model", tokenizer="words")
    # A model whose output layer overflows: the loss is not finite at the first step (a diverging test stage).
    poisoned = make_tiny_llama(root / "poisoned", tokenizer="words")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(poisoned / "model.safetensors"))
    tensors["lm_head.weight"] = np.full_like(tensors["lm_head.weight"], 3e38)
    save_file(tensors, str(poisoned / "model.safetensors"), metadata={"format": "pt"})
    rng = random.Random(0)
    with open(root / "train.jsonl", "w") as fh:
        for _ in range(200):
            words = [f"w{rng.randrange(20)}" for _ in range(4)]
            fh.write(json.dumps({"prompt": " ".join(words), "completion": " ".join(reversed(words))}) + "\n")
    return {"model": model, "poisoned": poisoned, "train": root / "train.jsonl"}


def spec(root: Path, files: dict, experiment: str, *, steps: int, test_steps: int | None = None,
         model: str = "model", **extra) -> Path:
    data = {
        "experiment": experiment,
        "hypothesis": {"statement": "a tiny run on the local SLURM cluster"},
        "model": {"path": str(files[model]), "size": "tiny", "quantization": "none",
                  "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"train": str(files["train"]), "valid": str(files["train"]), "format": "prompt_completion",
                 "max_length": 32, "packing": False},
        "training": {"max_steps": steps, "batch_size": 8, "grad_accum": 1, "lr": 0.01,
                     "schedule": {"kind": "constant", "warmup_steps": 0}, "eval_every": 1000, "eval_examples": 4,
                     "checkpoint_every": 1000, "early_stopping": {"enabled": False}},
        "resources": {"cluster": "local", "cpus": 1, "mem": "1G", "time": "00:10:00"},
        "backend": "torch",
    }
    if test_steps:
        data["stages"] = {"test": {"max_steps": test_steps, "time": "00:05:00"}}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = root / f"{experiment}.yaml"
    path.write_text(json.dumps(data, indent=2))   # JSON is YAML
    return path


def jobs_of(root: Path, experiment: str) -> dict:
    return json.loads((root / "runs" / experiment / "jobs.json").read_text())["runs"]


def steps_trained(run_dir: Path) -> list[int]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec and "event" not in rec:
            out.append(rec["step"])
    return out


def summary_of(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def last_step(run_dir: Path) -> int:
    try:
        steps = steps_trained(run_dir)
    except (OSError, json.JSONDecodeError):
        return 0
    return steps[-1] if steps else 0


@pytest.fixture(scope="module")
def project(slurm_cluster, tmp_path_factory):
    """A project directory with every experiment submitted (the preemption run first: it takes longest)."""
    root = tmp_path_factory.mktemp("slurm-project")
    files = make_project(root)
    specs = {
        "preempt": spec(root, files, "preempt", steps=PREEMPT_STEPS),
        "basic": spec(root, files, "basic", steps=8, test_steps=6),
        "sweep": spec(root, files, "sweep", steps=8,
                      sweep={"matrix": {"model.lora.rank": [2, 4]}, "name": "r{model.lora.rank}", "max_concurrent": 2}),
        "refused": spec(root, files, "refused", steps=8, test_steps=2),
        "diverge": spec(root, files, "diverge", steps=8, test_steps=4, model="poisoned"),
    }
    try:
        # The preemption job's steps take 0.1 s at least (SPECC_SLOW_STEPS, inherited by the job): a tiny model
        # trains 40 steps in a fraction of a second, faster than a signal travels through SLURM.
        outputs = {name: specc("submit", str(path), cwd=root, check=True,
                               env={"SPECC_SLOW_STEPS": "0.1"} if name == "preempt" else None)
                   for name, path in specs.items()}
        yield {"root": root, "files": files, "specs": specs, "submit": outputs}
    finally:
        for name in specs:   # leave nothing queued behind a failed test
            if (root / "runs" / name / "jobs.json").exists():
                specc("cancel", name, cwd=root)


def test_preemption_checkpoints_requeues_and_resumes_without_losing_or_repeating_a_step(project):
    root = project["root"]
    [rec] = jobs_of(root, "preempt")["main"]
    jid, run_dir = rec["job_id"], root / "runs/preempt/main"

    def interrupt_at(restarts: int, send) -> int:
        """Wait until run `restarts` has trained 3 steps past its start, interrupt it, wait for the requeue."""
        def ready():
            info = job_info(jid) or {}
            if info.get("JobState") != "RUNNING" or int(info.get("Restarts", 0)) != restarts:
                return None
            return last_step(run_dir) >= start + 3
        start = summary_of(run_dir)["steps"] if restarts else 0
        wait_for(ready, timeout=JOB_TIMEOUT, poll=0.3, what=f"run {restarts} of job {jid} to train 3 steps")
        send()
        # The trainer checkpoints at its next step boundary and writes summary.json; SLURM requeues the job.
        summary = wait_for(lambda: (s := summary_of(run_dir)) and s["steps"] >= start + 3 and s,
                           timeout=120, poll=0.3, what=f"run {restarts} of job {jid} to checkpoint")
        wait_for(lambda: int((job_info(jid) or {}).get("Restarts", 0)) > restarts, timeout=120, poll=0.5,
                 what=f"job {jid} to be requeued")
        assert summary["status"] == "interrupted", summary
        assert summary["steps"] < PREEMPT_STEPS, "the run finished before the signal: steps are too fast for this test"
        return summary["steps"]

    at_term = interrupt_at(0, lambda: slurm_run("scancel", "--signal=TERM", "--batch", jid))
    at_usr1 = interrupt_at(1, lambda: slurm_run("scancel", "--signal=USR1", "--batch", jid))
    at_requeue = interrupt_at(2, lambda: slurm_run("scontrol", "requeue", jid))
    assert at_term < at_usr1 < at_requeue

    info = wait_for_job_done(jid, timeout=JOB_TIMEOUT)
    log = (root / rec["log"]).read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "3"), log
    assert steps_trained(run_dir) == list(range(1, PREEMPT_STEPS + 1))      # none lost, none trained twice
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["restarts"]) == ("completed", PREEMPT_STEPS, 3)
    # --open-mode=append: one log across the four runs, each with its header.
    for n in range(4):
        assert f"specc: job {jid} on " in log and f"restart {n} at " in log
    assert "specc: SIGTERM received, asking the trainer to checkpoint" in log
    assert "specc: SIGUSR1 received, asking the trainer to checkpoint" in log
    for step in (at_term, at_usr1, at_requeue):
        assert f"checkpointed at step {step}" in log and f"resumed from runs/preempt/main/checkpoints/step_{step:07d}" in log
    assert log.count("specc: checkpointed (exit 75); requeueing") == 2
    assert f"specc: checkpointed (exit 75); SLURM is requeueing {jid} itself" in log   # the external requeue came first

    table = specc("status", "preempt", cwd=root, check=True).stdout
    assert f"{PREEMPT_STEPS}/{PREEMPT_STEPS}" in table and "COMPLETED" in table


def test_submit_runs_the_test_stage_then_the_gated_full_run(project):
    root = project["root"]
    out = project["submit"]["basic"].stdout
    assert "test main → local/debug: first choice (test runs prefer partitions that start at once)" in out
    assert "full main → local/main: first choice (full runs prefer the largest GPUs" in out
    jobs = jobs_of(root, "basic")["main"]
    test, full = jobs
    assert (test["stage"], test["partition"], full["stage"], full["partition"]) == ("test", "debug", "full", "main")
    assert full["depends_on"] == test["job_id"] and full["log"] == f"runs/basic/logs/main-{full['job_id']}.out"

    assert wait_for_job_done(test["job_id"], timeout=JOB_TIMEOUT)["JobState"] == "COMPLETED"
    assert json.loads((root / "runs/basic/main.test/gate.json").read_text())["ok"] is True
    info = wait_for_job_done(full["job_id"], timeout=JOB_TIMEOUT)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), (root / full["log"]).read_text()
    summary = json.loads((root / "runs/basic/main/summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", 8)
    log = (root / full["log"]).read_text()
    assert "specc gate: basic/main: the test stage passed" in log
    assert (root / "runs/basic/main/adapter/adapter_config.json").is_file()

    table = specc("status", "basic", cwd=root, check=True).stdout
    assert "COMPLETED" in table and "8/8" in table and "6/6" in table


def test_a_sweep_is_one_job_array_and_every_task_trains_its_own_run(project):
    root = project["root"]
    out = project["submit"]["sweep"].stdout
    assert "full 2-task array → local/main" in out
    jobs = jobs_of(root, "sweep")
    assert list(jobs) == ["r2", "r4"]
    arrays = {recs[0]["array_job_id"] for recs in jobs.values()}
    assert len(arrays) == 1                                                  # ONE array
    [fa] = arrays
    assert [recs[0]["job_id"] for recs in jobs.values()] == [f"{fa}_0", f"{fa}_1"]
    assert jobs["r4"][0]["log"] == f"runs/sweep/logs/sweep-{fa}_1.out"
    assert "#SBATCH --array=0-1%2" in (root / "generated/sweep/array.sbatch").read_text()   # max_concurrent → %2
    for run, [full] in jobs.items():
        info = wait_for_job_done(full["job_id"], timeout=2 * JOB_TIMEOUT)
        assert info["JobState"] == "COMPLETED", (root / full["log"]).read_text()
        summary = json.loads((root / "runs/sweep" / run / "summary.json").read_text())
        assert (summary["run"], summary["status"], summary["steps"]) == (run, "completed", 8)
        assert f"generated/sweep/{run}/config.json" in (root / full["log"]).read_text()
    rank = {run: json.loads((root / "runs/sweep" / run / "adapter/adapter_config.json").read_text())["r"] for run in jobs}
    assert rank == {"r2": 2, "r4": 4}
    table = specc("status", "sweep", cwd=root, check=True).stdout
    assert f"{fa}_0" in table and f"{fa}_1" in table and table.count("8/8") == 2


def test_a_sweep_with_a_test_stage_submits_the_test_array_first(project, tmp_path):
    path = spec(tmp_path, project["files"], "drysweep", steps=8, test_steps=4,
                sweep={"matrix": {"model.lora.rank": [2, 4]}, "name": "r{model.lora.rank}", "control": True})
    out = specc("submit", str(path), "--dry-run", cwd=tmp_path, check=True).stdout
    # Issue 14: the control run is an eval-only job of its own (control_array.sbatch), not a task of the training array.
    assert "test 2-task array → local/debug" in out and "full 2-task array → local/main" in out
    assert "full 1-task array control_array → local/main" in out
    assert "sbatch --parsable --partition=main generated/drysweep/control_array.sbatch" in out   # waits for no test
    assert "sbatch --parsable --partition=debug generated/drysweep/test_array.sbatch" in out
    assert ("sbatch --parsable '--dependency=aftercorr:<test job id>' --kill-on-invalid-dep=yes --partition=main "
            "generated/drysweep/array.sbatch") in out
    script = (tmp_path / "generated/drysweep/array.sbatch").read_text()
    assert '"${SPECC}" gate "${CONFIG}" || exit 1' in script      # every task checks its own test stage
    assert "r4/config.json" in script and "control_tiny/config.json" not in script
    assert "control_tiny/config.json" in (tmp_path / "generated/drysweep/control_array.sbatch").read_text()


def blocked_by_test(root: Path, experiment: str) -> tuple[dict, dict, str]:
    test, full = jobs_of(root, experiment)["main"]
    test_info = wait_for_job_done(test["job_id"], timeout=JOB_TIMEOUT)
    full_info = wait_for_job_done(full["job_id"], timeout=60)
    table = specc("status", experiment, cwd=root, check=True).stdout
    return test_info, full_info, table


def test_a_test_stage_the_gate_refuses_keeps_the_full_run_from_starting(project):
    root = project["root"]
    test_info, full_info, table = blocked_by_test(root, "refused")
    assert (test_info["JobState"], test_info["ExitCode"]) == ("FAILED", "1:0")
    assert (full_info["JobState"], full_info["Reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
    assert not (root / "runs/refused/main").exists()                          # never trained
    verdict = json.loads((root / "runs/refused/main.test/gate.json").read_text())
    assert verdict["ok"] is False and "only 2 training step(s)" in verdict["reasons"][0]
    assert "test stage failed: gate refused: only 2 training step(s) logged" in table


def test_a_diverging_test_stage_keeps_the_full_run_from_starting(project):
    root = project["root"]
    test_info, full_info, table = blocked_by_test(root, "diverge")
    assert (test_info["JobState"], test_info["ExitCode"]) == ("FAILED", "65:0")
    assert (full_info["JobState"], full_info["Reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
    assert not (root / "runs/diverge/main").exists()
    summary = json.loads((root / "runs/diverge/main.test/summary.json").read_text())
    assert summary["status"] == "diverged"
    assert "test stage failed: diverged: loss is" in table
    test_log = (root / jobs_of(root, "diverge")["main"][0]["log"]).read_text()
    assert "the run diverged (NaN/Inf); not requeued" in test_log


def test_a_spec_over_the_partitions_limits_fails_at_compile_time(project, tmp_path):
    files = project["files"]
    queued_before = slurm_run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split()
    for name, resources, message in [
        ("too-long", {"partition": "debug", "time": "01:00:00"}, "exceeds partition debug's maximum 00:30:00"),
        ("gpus", {"gpus": 1}, "1 GPUs requested, partition"),
        ("memory", {"mem": "100G"}, "memory 100G requested, partition"),
    ]:
        path = spec(tmp_path, files, name, steps=8, resources=resources)
        proc = specc("submit", str(path), cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "runs" / name).exists() and not (tmp_path / "generated" / name).exists()
    assert slurm_run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split() == queued_before


def test_dry_run_shows_the_choice_and_the_commands_and_submits_nothing(project, tmp_path):
    path = spec(tmp_path, project["files"], "dry", steps=8, test_steps=4)
    queued_before = slurm_run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split()
    proc = specc("submit", str(path), "--dry-run", cwd=tmp_path, check=True)
    out = proc.stdout
    assert "test main → local/debug: first choice" in out and "has room now" in out
    assert "dry run: nothing submitted" in out
    assert "sbatch --parsable --partition=debug generated/dry/main/test.sbatch" in out
    assert ("sbatch --parsable '--dependency=afterok:<test job id>' --kill-on-invalid-dep=yes --partition=main "
            "generated/dry/main/train.sbatch") in out
    assert f"SPECC={Path(shutil.which('specc', path=str(Path(sys.executable).parent)) or '').resolve()}" in out
    assert (tmp_path / "generated/dry/main/train.sbatch").is_file()              # compiled, like `specc compile`
    assert not (tmp_path / "runs/dry/jobs.json").exists()
    assert slurm_run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split() == queued_before


def test_cancel_stops_the_recorded_jobs_and_resubmission_waits_for_them(project, tmp_path):
    path = spec(tmp_path, project["files"], "held", steps=8)
    specc("submit", str(path), cwd=tmp_path, check=True)
    [rec] = jobs_of(tmp_path, "held")["main"]
    table = specc("status", "held", cwd=tmp_path, check=True).stdout
    assert rec["job_id"] in table and ("PENDING" in table or "RUNNING" in table)
    again = specc("submit", str(path), cwd=tmp_path)
    assert again.returncode == 1 and "already submitted and not finished" in again.stderr
    proc = specc("cancel", "held/main", cwd=tmp_path, check=True)
    assert f"cancelled {rec['job_id']}" in proc.stdout
    assert wait_for_job_done(rec["job_id"], timeout=60)["JobState"] == "CANCELLED"
    time.sleep(5)   # a checkpointing trainer exits 75 on the cancel's SIGTERM: the script must not requeue it
    info = job_info(rec["job_id"])
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0")
    assert "nothing to cancel" in specc("cancel", "held", cwd=tmp_path, check=True).stdout
