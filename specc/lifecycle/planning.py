"""`specc plan SPEC`: everything the plan says about an experiment, as data (plan_view.py renders it).

The model check and the dataset analysis with the model's own tokenizer (analysis.py, with --data),
an estimate per run with its source (specc/estimate: calibration, prior run, declared figure), the
fit to the time window, peak GPU memory before the run (specc/estimate/memory.py: formula or
calibrated) and the largest batch under the spec's headroom, and the totals. Broken
model or data files (what `specc run` would stop on at start) are collected in `problems`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from specc.errors import SpecError
from specc.estimate.calibrations import CalibrationFile, load_calibration
from specc.estimate.fit import Fit, fit_window, gpu_hours, recommend_batch
from specc.estimate.memory import Arch, estimate_memory, largest_batch, memory_calibration
from specc.estimate.priors import load_priors
from specc.estimate.result import Estimate, RunFacts
from specc.estimate.shape import device_key, shape_of_config
from specc.estimate.sources import estimate_run
from specc.rundir import RUNS_ROOT
from specc.spec.clusters import load_catalog
from specc.spec.model import parse_time


@dataclass
class PlanReport:
    spec_path: Path
    plan: object                                    # specc.plan.runs.ExperimentPlan
    inputs: object | None = None                    # specc.plan.inputs.InputReport (None: --no-data)
    models: dict = field(default_factory=dict)      # model path → analysis.ModelReport
    data_groups: list = field(default_factory=list)  # [(analysis.DataAnalysis, [run names])], one per distinct data/batching
    analyses: dict = field(default_factory=dict)    # run name → analysis.DataAnalysis
    estimates: dict[str, Estimate] = field(default_factory=dict)
    fits: dict[str, Fit] = field(default_factory=dict)
    batch_note: str | None = None                   # the batch size for the GPU, or why it cannot be sized
    memory: object | None = None                    # estimate.memory.MemoryEstimate of the first training run on its GPU
    memory_gpu: tuple | None = None                 # (GPU type, its memory in GB, headroom) that memory was sized for
    total_h: float = 0.0                            # estimated hours of jobs (runs with an estimate)
    total_gpu_h: float = 0.0
    problems: list[str] = field(default_factory=list)   # broken model or data files: the plan fails

    @property
    def first_train(self):
        """The first training run (else the first run): the one whose breakdown and resources are shown."""
        return next((r for r in self.plan.runs if r.kind == "train"), self.plan.runs[0])

    @property
    def sources(self) -> dict[str, str]:
        """{source text: source kind}, in run order."""
        out: dict[str, str] = {}
        for run in self.plan.runs:
            out.setdefault(self.estimates[run.name].source_text, self.estimates[run.name].source)
        return out

    @property
    def tokens_sources(self) -> list[str]:
        return sorted({self.estimates[r.name].tokens_source for r in self.plan.runs
                       if self.estimates[r.name].tokens_source and r.kind == "train"})

    @property
    def notes(self) -> list[str]:
        return list(dict.fromkeys(n for est in self.estimates.values() for n in est.notes))

    @property
    def fit_groups(self) -> list[tuple[Fit, list[str]]]:
        """Training runs with the same verdict together, none dropped."""
        groups: dict = {}
        for run in self.plan.runs:
            fit = self.fits[run.name]
            if run.kind == "train":
                groups.setdefault((fit.text, fit.suggestions), (fit, []))[1].append(run.name)
        return list(groups.values())

    @property
    def partly_estimated(self) -> bool:
        return any(self.estimates[r.name].total_s is None for r in self.plan.runs if r.kind == "train")


def plan_report(loaded, plan, *, runs_dir: Path = RUNS_ROOT, data: bool = True,
                calibrations_dir: Path | None = None) -> PlanReport:
    """The plan of one planned spec (plan_specs' (LoadedSpec, ExperimentPlan))."""
    from specc.plan.inputs import check_inputs

    report = PlanReport(loaded.path, plan)
    facts: dict[str, RunFacts] = {}
    if data:
        report.inputs = check_inputs(plan, loaded)
        facts = _analyse(report)
    priors = load_priors(runs_dir)
    cals: dict[str, CalibrationFile | None] = {}
    for run in plan.runs:
        key = device_key(run.config["resources"])
        if key not in cals:
            cals[key] = load_calibration(key, calibrations_dir)
        m = report.models.get(run.config["model"]["path"])
        report.estimates[run.name] = estimate_run_for_plan(run, cals[key], facts.get(run.name), priors, m)
    for run in plan.runs:
        e, r = report.estimates[run.name], run.spec.resources
        report.fits[run.name] = fit_window(run.config, e, r.window_hours, r.margin_hours,
                                           None if r.window_hours else parse_time(run.resources.time))
        if e.total_s:
            report.total_h += e.total_s / 3600
            report.total_gpu_h += gpu_hours(e.total_s, run.resources.gpus) or 0
    report.batch_note = _memory_plan(report, cals) or _batch_note(report, cals)
    report.problems = input_problems(report.inputs, report.analyses)
    return report


def estimate_run_for_plan(run, calibration: CalibrationFile | None, facts: RunFacts | None, priors: list,
                          model=None) -> Estimate:
    """A run's estimate with all that `specc plan` knows: the tokenized data, priors, the model's size."""
    ok = model is not None and model.ok
    return estimate_run(run.config, calibration=calibration, facts=facts, priors=priors,
                        new_params=model.params if ok else None,
                        new_arch=model.arch if ok and model.arch.get("hidden_size") else None)


def _analyse(report: PlanReport) -> dict[str, RunFacts]:
    """Check each model and tokenize each training run's data (once per distinct data and batching)."""
    from specc.lifecycle.analysis import (
        analyze_data,
        check_model,
        clear_caches,
        facts_from_analysis,
    )

    clear_caches()
    for run in report.plan.runs:
        path = run.config["model"]["path"]
        if path not in report.models:
            report.models[path] = check_model(path)
    groups: dict = {}
    facts = {}
    for run in report.plan.runs:
        if run.kind != "train":
            continue
        m = report.models[run.config["model"]["path"]]
        if not m.ok:
            continue
        a = analyze_data(run.config, m.resolved)
        groups.setdefault(a.key, (a, []))[1].append(run.name)
        report.analyses[run.name] = a
        f = facts_from_analysis(run.config, a)
        if f is not None:
            facts[run.name] = f
    report.data_groups = list(groups.values())
    return facts


def _gpu_memory_gb(report: PlanReport) -> float | None:
    p, res = report.plan, report.first_train.resources
    catalog, _ = load_catalog(p.spec_path, p.spec.resources.catalog)
    cluster = catalog.clusters.get(res.cluster)
    return cluster.gpu_types[res.gpu_type].memory_gb if cluster and res.gpu_type in (cluster.gpu_types or {}) else None


def _memory_plan(report: PlanReport, cals: dict) -> str | None:
    """Peak GPU memory of the first training run from the memory model (its architecture known here), and
    the largest micro-batch under resources.memory_headroom, accumulation keeping batch × accum."""
    run = next((r for r in report.plan.runs if r.kind == "train"), None)
    m = report.models.get(run.config["model"]["path"]) if run is not None else None
    arch = Arch.from_config(m.arch) if m is not None and m.ok else None
    if run is None or not run.resources.gpus or arch is None:
        return None
    gpu_mem = _gpu_memory_gb(report)
    headroom = run.spec.resources.memory_headroom
    cal, exact = memory_calibration(cals.get(device_key(run.config["resources"])), shape_of_config(run.config))
    report.memory = estimate_memory(run.config, arch, calibration=cal, calibrated_shape=exact)
    if not gpu_mem:
        return f"batch: the catalog has no memory figure for GPU type {run.resources.gpu_type!r}; cannot size the batch"
    report.memory_gpu = (run.resources.gpu_type, gpu_mem, headroom)
    best, est = largest_batch(run.config, arch, gpu_mem, headroom, calibration=cal)
    t = run.spec.training
    if best is None:
        return (f"batch for {run.name} on {run.resources.gpu_type} ({gpu_mem:g} GB): even batch 1 needs "
                f"{est.device_mb / 1024:,.1f} GB, over {headroom:.0%} of the GPU: enable gradient checkpointing, use "
                "nf4, a shorter max_length or a smaller loss_chunk")
    effective = t.batch_size * t.grad_accum
    batch = max(d for d in range(1, min(best, effective) + 1) if effective % d == 0)   # batch × accum stays
    return (f"batch for {run.name} on {run.resources.gpu_type} ({gpu_mem:g} GB): the largest micro-batch under "
            f"{headroom:.0%} of the GPU is {best} ({est.device_mb / 1024:,.1f} GB predicted, {report.memory.source}); "
            f"keeping batch × accum = {effective}: batch {batch} × accum {effective // batch}")


def _batch_note(report: PlanReport, cals: dict) -> str | None:
    """The batch for the first training run on its GPU (resources.memory_headroom of its memory), from measured
    memory, when the model's architecture is not readable here (otherwise _memory_plan)."""
    p = report.plan
    res = report.first_train.resources
    gpu_mem = _gpu_memory_gb(report)
    if not res.gpus:
        return None
    if not gpu_mem:
        return f"batch: the catalog has no memory figure for GPU type {res.gpu_type!r}; cannot size the batch"
    run = next((r for r in p.runs if r.kind == "train"), None)
    if run is None:
        return None
    est = report.estimates[run.name]
    cal = cals.get(device_key(run.config["resources"]))
    fixed = None
    if cal and est.source == "calibration":
        mem = (cal.entry(est.shape_key) or {}).get("memory") or {}
        fixed = mem.get("fixed_mb") / 1024 if mem.get("fixed_mb") else None
    headroom = run.spec.resources.memory_headroom
    rec = recommend_batch(est, gpu_mem, run.spec.training.batch_size, run.spec.training.grad_accum, fixed, headroom)
    if rec:
        return f"batch for {run.name} on {res.gpu_type} ({gpu_mem:g} GB): {rec[2]}"
    if est.peak_mem_gb and not est.measured:
        return (f"batch: peak memory {est.peak_mem_gb:g} GB is declared, not measured; calibrate to size "
                f"the batch for {headroom:.0%} of the GPU")
    return None


def input_problems(inputs, analyses: dict) -> list[str]:
    """The errors `specc run` would give at start for a broken model or data file, in full."""
    if inputs is None:
        return []
    problems = list(inputs.problems)
    reported = {str(i) for i in problems}
    extra = [a.problem for a in {id(a): a for a in analyses.values()}.values()
             if a.problem and not a.problem.startswith("not on this machine") and not any(
                 a.problem.splitlines()[0] in r for r in reported)]
    return [str(i) for i in SpecError(problems).issues] + extra


def short_point_value(v) -> str:
    """A sweep point's value for a table cell: a model as size=…, else the value."""
    if isinstance(v, dict):
        keys = [k for k in ("size", "rank") if k in v] or [k for k in v if k == "path"] or list(v)[:2]
        return ", ".join(f"{k}={v[k]}" for k in keys)[:40]
    return str(v)
