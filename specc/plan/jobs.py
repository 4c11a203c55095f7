"""A sweep's job arrays: one per job shape, so every run gets its own --time, signal lead, GPUs and memory.

Runs whose resolved resources are the same in everything an #SBATCH line or the job's environment
depends on (ResolvedResources.job_shape; for a run with a test stage, its test stage's too) share one
array; control runs (eval-only, the base model alone) never share one with training runs. Emit writes
one script per group and `specc submit` submits one array per group, so the two agree by construction.

Names: one training group is `array.sbatch` (and `test_array.sbatch`), several are `array_1.sbatch`,
`array_2.sbatch`, ...; control groups are `control_array.sbatch` (or `control_array_1.sbatch`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

from specc.plan.runs import ExperimentPlan, RunPlan


@dataclass(frozen=True)
class JobGroup:
    name: str                       # the script's stem: array, array_2, control_array
    kind: str                       # "train" | "control"
    runs: tuple[RunPlan, ...]       # in plan order; task i of the array trains runs[i]
    why: str                        # what this array's jobs look like, and why they are apart from the others

    @property
    def tested(self) -> tuple[RunPlan, ...]:
        return tuple(r for r in self.runs if r.test_resources is not None)

    @property
    def test_name(self) -> str:
        return "test_" + self.name

    @property
    def resources(self):
        return self.runs[0].resources


def _key(run: RunPlan) -> tuple:
    test = run.test_resources.job_shape if run.test_resources is not None else None
    return run.kind, run.resources.job_shape, test


def job_groups(plan: ExperimentPlan) -> list[JobGroup]:
    """The arrays of a sweep, training groups first (in the order their first run appears), then controls."""
    groups: dict[tuple, list[RunPlan]] = {}
    for run in plan.runs:
        groups.setdefault(_key(run), []).append(run)
    train = [runs for key, runs in groups.items() if key[0] == "train"]
    control = [runs for key, runs in groups.items() if key[0] == "control"]
    out = []
    for kind, members, stem in (("train", train, "array"), ("control", control, "control_array")):
        for i, runs in enumerate(members, 1):
            # Runs with a test stage lead their array: aftercorr pairs full task i with test task i.
            runs = sorted(runs, key=lambda r: r.test_resources is None)
            name = stem if len(members) == 1 else f"{stem}_{i}"
            out.append(JobGroup(name, kind, tuple(runs), _why(kind, runs, members, train)))
    return out


def shape_text(res) -> str:
    gpu = f"{res.gpus} GPU(s){' ' + res.gpu_type if res.gpu_type else ''}, " if res.gpus else ""
    return (f"{gpu}{res.nodes} node(s) × {res.cpus} CPU(s), {res.mem}, --time {res.time} ({res.time_source}), "
            f"signal {res.signal_lead_s} s before the limit")


def _why(kind: str, runs: list[RunPlan], members: list, train: list) -> str:
    res = runs[0].resources
    if kind == "control":
        return f"eval-only control runs (the base model alone, no training): {shape_text(res)}"
    if len(members) == 1:
        return f"every training run has one shape: {shape_text(res)}"
    others = [g[0].resources for g in members if g is not runs and g[0].resources.job_shape != res.job_shape]
    diff = _differences(res, others[0]) if others else "its test stage differs"
    return f"its own shape ({diff}): {shape_text(res)}"


_COMPARED = ("partition", "qos", "gpus", "gpu_type", "nodes", "cpus", "mem", "time", "signal_lead_s", "account",
             "constraint", "exclusive", "env", "setup", "extra_sbatch", "max_requeues", "choices")


def _differences(res, other) -> str:
    diffs = [f"{f} {_text(getattr(res, f))} vs {_text(getattr(other, f))}" for f in _COMPARED
             if getattr(res, f) != getattr(other, f)]
    return ", ".join(diffs) or "its job settings differ"


def _text(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join("=".join(map(str, x)) if isinstance(x, tuple) else str(x) for x in v) + "]"
    return str(v)
