"""`specc submit`: compiled sbatch scripts → SLURM jobs, with the test stage first and the gate in between.

One run: its test.sbatch (when the spec has a test stage), then train.sbatch with
`--dependency=afterok:<test> --kill-on-invalid-dep=yes`. A sweep: test_array.sbatch, then
array.sbatch with `--dependency=aftercorr:<test array>` (task i waits for test task i).
Each job goes to the partition choose.py picks; the choice is passed on the sbatch command line
(`--partition`, `--qos`, `--gres`), which overrides the script's #SBATCH defaults.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from specc.emit.sbatch import parse_sbatch_lines
from specc.errors import UserError, staged
from specc.plan.jobs import JobGroup, job_groups
from specc.plan.runs import ExperimentPlan, RunPlan
from specc.slurm import client
from specc.slurm.choose import Decision, choose
from specc.slurm.state import JobRecord, Jobs, load_jobs, now, save_jobs
from specc.spec.clusters import load_catalog


@dataclass
class PlannedJob:
    stage: str                       # "test" | "full"
    script: Path                     # generated/<exp>/...sbatch
    runs: list[RunPlan]              # one run, or the runs of an array in task order
    decision: Decision
    array: bool = False
    depends_on: "PlannedJob | None" = None
    job_id: str | None = None        # after submission
    flags: dict = field(default_factory=dict)   # the script's #SBATCH flags
    why: str = ""                    # an array: its shape, and why it is apart from the others
    tasks: list[int] | None = None   # an array submitted in part (--unfinished): these task ids only

    @property
    def label(self) -> str:
        n = len(self.tasks) if self.tasks is not None else len(self.runs)
        what = f"{n}-task array" if self.array else self.runs[0].name
        if self.array and self.script.stem not in ("array", "test_array"):
            what += f" {self.script.stem}"
        return f"{self.stage} {what}"

    @property
    def members(self) -> list[tuple[int, RunPlan]]:
        """(task id, run) of what this job trains: every task of an array, or those of a partial one."""
        if not self.array:
            return [(0, self.runs[0])]
        return [(i, self.runs[i]) for i in (self.tasks if self.tasks is not None else range(len(self.runs)))]

    def array_args(self) -> list[str]:
        if not self.array or self.tasks is None:
            return []
        limit = self.flags.get("array", "").partition("%")[2]
        return ["--array=" + ",".join(map(str, self.tasks)) + (f"%{limit}" if limit else "")]

    def choice_args(self) -> list[str]:
        v = self.decision.chosen
        args = [f"--partition={v.partition}"]
        if v.qos:
            args.append(f"--qos={v.qos}")
        lead = _lead_resources(self)
        if lead.gpus and v.gpu_type and v.gpu_type != lead.gpu_type:
            per_node = -(-lead.gpus // lead.nodes)
            args.append(f"--gres=gpu:{v.gpu_type}:{per_node}")
        return args

    def dependency_args(self) -> list[str]:
        if self.depends_on is None:
            return []
        dep_id = self.depends_on.job_id or "<test job id>"
        kind = "aftercorr" if self.array else "afterok"
        return [f"--dependency={kind}:{dep_id}", "--kill-on-invalid-dep=yes"]

    def sbatch_args(self) -> list[str]:
        return [*self.dependency_args(), *self.array_args(), *self.choice_args(), str(self.script)]


def _lead_resources(job: PlannedJob):
    from specc.spec.model import parse_time

    res = [r.test_resources if job.stage == "test" else r.resources for r in job.runs]
    return max(res, key=lambda r: parse_time(r.time))


def _lead_run(runs: list[RunPlan], stage: str) -> RunPlan:
    from specc.spec.model import parse_time

    # The array script's limits are its longest member's (emit/writer.py array_script does the same).
    return max(runs, key=lambda r: parse_time((r.test_resources if stage == "test" else r.resources).time))


@staged("submit")
def plan_jobs(plan: ExperimentPlan, out_dir: Path, run_name: str | None, *, sinfo,
              only: dict[str, bool] | None = None) -> list[PlannedJob]:
    """The jobs to submit, in submission order (a test job before the full job that depends on it).

    `only` (--unfinished): {run: whether its test stage must run again}; the other runs are left out, and an
    array is submitted with just those tasks (`--array=1,3`)."""
    catalog, _ = load_catalog(plan.spec_path, plan.spec.resources.catalog)
    root = out_dir / plan.experiment
    jobs: list[PlannedJob] = []
    if plan.spec.sweep is not None and run_name is None:
        for group in job_groups(plan):
            if only is not None and not any(r.name in only for r in group.runs):
                continue
            jobs += _group_jobs(group, root, catalog, sinfo, only)
    else:
        runs = [r for r in plan.runs if run_name is None or r.name == run_name]
        if not runs:
            raise UserError(f"experiment {plan.experiment} has no run {run_name!r}",
                            hint="runs: " + ", ".join(r.name for r in plan.runs))
        run = runs[0]
        test_job = None
        if only is not None and run.name not in only:
            return []
        if run.test_resources is not None and (only is None or only[run.name]):
            test_job = PlannedJob("test", root / run.name / "test.sbatch", [run], choose(run, "test", catalog, sinfo=sinfo))
            jobs.append(test_job)
        jobs.append(PlannedJob("full", root / run.name / "train.sbatch", [run], choose(run, None, catalog, sinfo=sinfo),
                               depends_on=test_job))
    for job in jobs:
        job.flags = dict(parse_sbatch_lines(job.script.read_text(encoding="utf-8"))) if job.script.is_file() else {}
    return jobs


def _group_jobs(group: JobGroup, root: Path, catalog, sinfo, only: dict[str, bool] | None) -> list[PlannedJob]:
    """One shape's test array (if any) and full array; with `only`, just the tasks of those runs."""
    jobs: list[PlannedJob] = []
    runs = list(group.runs)
    tested = list(group.tested)
    # aftercorr pairs test task i with full task i: the tested runs must come first (plan/jobs.py).
    assert runs[:len(tested)] == tested, "tested runs must lead the array"
    retest = [r for r in tested if only is None or only.get(r.name)]
    test_job = None
    if retest:
        test_job = PlannedJob("test", root / f"{group.test_name}.sbatch", tested,
                              choose(_lead_run(tested, "test"), "test", catalog, sinfo=sinfo), array=True,
                              why=group.why, tasks=None if only is None else [tested.index(r) for r in retest])
        jobs.append(test_job)
    decision = choose(_lead_run(runs, "full"), None, catalog, sinfo=sinfo)
    script = root / f"{group.name}.sbatch"
    if only is None:
        jobs.append(PlannedJob("full", script, runs, decision, array=True, depends_on=test_job, why=group.why))
        return jobs
    # Resubmitting: the runs whose test runs again wait for it; the others (test passed) start at once.
    after_test = [i for i, r in enumerate(runs) if r.name in only and only[r.name] and r in retest]
    at_once = [i for i, r in enumerate(runs) if r.name in only and i not in after_test]
    for tasks, dep in ((after_test, test_job), (at_once, None)):
        if tasks:
            jobs.append(PlannedJob("full", script, runs, decision, array=True, depends_on=dep, why=group.why,
                                   tasks=tasks))
    return jobs


def specc_executable() -> str:
    """The `specc` the jobs must run: this very install (the console script next to this Python)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "specc" and argv0.exists() and os.access(argv0, os.X_OK):
        return str(argv0.resolve())
    beside = Path(sys.executable).parent / "specc"
    if beside.exists():
        return str(beside)
    found = shutil.which("specc")
    if found:
        return str(Path(found).resolve())
    raise UserError("cannot find the specc executable to run inside the jobs",
                    hint="install specc (pip install -e .) so that a `specc` command exists")


def job_env() -> dict[str, str]:
    return {"SPECC": specc_executable(), "SPECC_PYTHON": sys.executable}


def command_line(job: PlannedJob, env: dict[str, str]) -> str:
    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"{envs} sbatch --parsable " + " ".join(shlex.quote(a) for a in job.sbatch_args())


def active_jobs(jobs: Jobs, runs: list[str]) -> list[tuple[str, JobRecord, str]]:
    """(run, record, state) of recorded jobs that SLURM still runs or queues."""
    found = []
    for run in runs:
        for stage in ("test", "full"):
            rec = jobs.latest(run, stage)
            if rec is None:
                continue
            info = client.job_record(rec.job_id)
            if info and info.get("JobState") not in client.TERMINAL:
                found.append((run, rec, info["JobState"]))
    return found


def log_path(pattern: str, job_id: str, name: str, index: int | None = None) -> str:
    out = pattern.replace("%x", name)
    if index is not None:
        out = out.replace("%A", job_id).replace("%a", str(index))
    return out.replace("%j", job_id)


@staged("submit")
def submit_jobs(plan: ExperimentPlan, planned: list[PlannedJob], env: dict[str, str], say) -> Jobs:
    """Submit in order, recording every job in runs/<exp>/jobs.json as soon as SLURM accepted it."""
    jobs = load_jobs(plan.experiment)
    Path("runs", plan.experiment, "logs").mkdir(parents=True, exist_ok=True)   # SLURM does not create it
    sbatch_env = client.with_env(**env)
    for job in planned:
        job_id = client.sbatch(job.sbatch_args(), env=sbatch_env)
        job.job_id = job_id
        v = job.decision.chosen
        pattern, name = job.flags.get("output", ""), job.flags.get("job-name", "")
        for index, run in job.members:
            jid = f"{job_id}_{index}" if job.array else job_id
            jobs.add(run.name, JobRecord(
                job_id=jid, stage=job.stage, submitted_at=now(), partition=v.partition, script=str(job.script),
                cluster=v.cluster, qos=v.qos, log=log_path(pattern, job_id, name, index if job.array else None) or None,
                array_job_id=job_id if job.array else None,
                depends_on=job.depends_on.job_id if job.depends_on else None))
        save_jobs(jobs)
        dep = f", after {job.depends_on.stage} job {job.depends_on.job_id}" if job.depends_on else ""
        say(f"submitted {job.label} as job {job_id} on {v.label}{dep}")
    return jobs
