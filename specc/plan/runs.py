"""plan: a pure function from a validated spec to frozen RunPlans.

It expands the sweep matrix, adds control runs, applies the naming template and the profile,
fills every default explicitly, resolves resources against the clusters catalog, and checks what
only makes sense across fields. Every problem is reported at once, anchored in the YAML.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from specc import __version__
from specc.errors import SpecError, SpecIssue, UserError, staged
from specc.plan.resources import ResolvedResources, control_resources, resolve_resources
from specc.plan.schedule import ScheduleSpec
from specc.plan.steps import StepCount, count_steps
from specc.plan.sweep import (PLACEHOLDER, apply_resource_rules, control_label, plain, point_issue, point_label, run_name, set_path,
                              valid_field_path, validate_point)
from specc.spec.clusters import load_catalog
from specc.spec.model import SLUG, Spec, model_section
from specc.spec.profiles import FALLBACK, PROFILES
from specc.spec.validate import LoadedSpec

PROFILE_FIELDS = (("training", "batch_size"), ("training", "grad_accum"), ("data", "max_length"))


@dataclass(frozen=True)
class RunPlan:
    experiment: str
    name: str
    kind: str                               # "train" or "control" (eval-only, base model)
    index: int                              # position in the experiment: the job-array index
    overrides: tuple[tuple[str, object], ...]   # the sweep point, as (dotted field, value)
    spec: Spec                              # this run's fully resolved spec
    steps: StepCount
    schedule: ScheduleSpec | None
    provenance: tuple[tuple[str, str], ...]     # field → "spec" | "sweep" | "profile:<p>" | "default"
    resources: ResolvedResources
    test_resources: ResolvedResources | None
    config: dict = field(repr=False)        # the resolved trainer config (config.json)


@dataclass(frozen=True)
class ExperimentPlan:
    spec_path: Path
    experiment: str
    spec: Spec
    runs: tuple[RunPlan, ...]
    catalog_source: str
    warnings: tuple[str, ...] = ()


def _get(data: dict, path: tuple):
    for p in path:
        if not isinstance(data, dict) or p not in data:
            return None
        data = data[p]
    return data


def _rel(spec_dir: Path, value: str | None) -> str | None:
    """Spec-relative paths become relative to the working directory (the repository root)."""
    if value is None or value.startswith("builtin:") or os.path.isabs(value):
        return value
    return os.path.relpath(os.path.normpath(spec_dir / value))


@staged("plan")
def plan_experiment(loaded: LoadedSpec, counted: dict[str, tuple[int, str]] | None = None) -> ExperimentPlan:
    """Expand and resolve every run of a spec, or raise SpecError with every problem.

    `counted`: step counts an earlier compile made from tokenized data, by CountInputs key (see count_steps)."""
    spec, located = loaded.spec, loaded.located
    issues: list[SpecIssue] = []
    warnings: list[str] = []
    try:
        catalog, catalog_source = load_catalog(loaded.path, spec.resources.catalog)
    except SpecError as exc:
        raise SpecError(exc.issues) from None
    except OSError as exc:
        raise SpecError([located.issue(("resources", "catalog"), f"cannot read the clusters catalog: {exc}")]) from None

    points: list[tuple[tuple[str, object], ...]] = [()]
    if spec.sweep is not None:
        axes = []
        for key, values in spec.sweep.matrix.items():
            path = tuple(key.split("."))
            if not valid_field_path(path):
                issues.append(located.issue(("sweep", "matrix", key), f"sweep axis {key!r} is not a spec field", key=True))
                continue
            if path[0] in ("experiment", "sweep"):
                issues.append(located.issue(("sweep", "matrix", key), f"cannot sweep over {key!r}", key=True))
                continue
            axes.append([(key, v) for v in values])
        if issues:
            raise SpecError(issues)
        points = [tuple(p) for p in itertools.product(*axes)]
        # Where each axis value is written, so a bad value is reported at its own line, once.
        value_index = {key: values for key, values in spec.sweep.matrix.items()}

    base = {k: v for k, v in located.data.items() if k != "sweep"}
    runs: list[RunPlan] = []
    names: dict[str, tuple] = {}
    controls: dict[str, Spec] = {}
    resolved_cache: dict = {}
    name_sections = {m.group(1).split(".")[0] for m in PLACEHOLDER.finditer(spec.sweep.name)} if spec.sweep else set()
    for point in points:
        raw = base   # the YAML's plain values; nothing below mutates them
        for key, value in point:
            raw = set_path(raw, tuple(key.split(".")), value)
        point_issues: list[SpecIssue] = []
        run_spec = validate_point(spec, raw, point, located, point_issues) if point else spec
        if point_issues:
            issues += [point_issue(located, issue, point, value_index) for issue in point_issues]
            continue
        run_spec, provenance = _apply_profile(run_spec, point)
        if spec.sweep is not None and spec.sweep.resources:
            run_spec, by_rule = apply_resource_rules(spec, run_spec, located, issues)
            provenance = tuple(sorted(dict(provenance, **dict(by_rule)).items()))
        if spec.sweep is not None:
            # Dump only the sections the naming template names: a large sweep plans thousands of runs.
            resolved = {s: plain(getattr(run_spec, s)) for s in name_sections if s in Spec.model_fields}
            try:
                name = run_name(spec.sweep.name, resolved)
            except KeyError as exc:
                issues.append(located.issue(("sweep", "name"), f"naming template names {exc.args[0]!r}, which is not a spec field"))
                break
        else:
            name = "main"
        if not SLUG.match(name) or name in (".", ".."):
            issues.append(located.issue(("sweep", "name") if spec.sweep else ("experiment",),
                                        f"run name {name!r} is not a slug (letters, digits, '.', '_', '-')"))
            continue
        if name in names:
            issues.append(located.issue(("sweep", "name"), f"run name {name!r} is produced twice (by {point_label(names[name])} "
                                        f"and {point_label(point)}); add the differing field to the template"))
            continue
        names[name] = point
        runs.append(_build_run(loaded, run_spec, name, "train", len(runs), point, provenance, catalog, issues,
                               resolved_cache, counted))
        controls.setdefault(run_spec.model.path, run_spec)

    wants_control = bool(spec.sweep and spec.sweep.control) or bool(spec.evaluation and spec.evaluation.control)
    where_control = ("sweep", "control") if spec.sweep and spec.sweep.control else ("evaluation", "control")
    issues += _expectation_issues(spec, located, wants_control)
    if wants_control and not issues:
        for run_spec in controls.values():
            name = f"control_{control_label(run_spec)}"
            if name in names:
                name = f"{name}_{len(names)}"
            names[name] = ()
            if run_spec.data.valid is None and run_spec.data.test is None:
                issues.append(located.issue(where_control, "control runs evaluate the base model: set data.valid or data.test"))
                break
            runs.append(_build_run(loaded, run_spec, name, "control", len(runs), (), (), catalog, issues, resolved_cache))
    if issues:
        raise SpecError(list(dict.fromkeys(issues)))   # one bad axis value fails many points: report it once
    for run in runs:
        if run.kind == "train" and run.steps.steps and run.spec.training.checkpoint_every > run.steps.steps:
            warnings.append(f"run {run.name}: checkpoint_every ({run.spec.training.checkpoint_every}) exceeds the run's "
                            f"{run.steps.steps} steps: only the final checkpoint is written")
            break
    from specc.estimate.attach import apply_estimates   # calibrations/ + declared figures: committed inputs only

    return apply_estimates(ExperimentPlan(loaded.path, spec.experiment, spec, tuple(runs), catalog_source, tuple(warnings)))


def _expectation_issues(spec: Spec, located, has_control: bool) -> list[SpecIssue]:
    """Tasks need a split and prompts; expectations naming a task metric need that task; vs_control a control run."""
    import difflib

    issues = []
    keys = [t.metric_key for t in spec.evaluation.tasks] if spec.evaluation else []
    for i, t in enumerate(spec.evaluation.tasks if spec.evaluation else []):
        if spec.data.format == "text" and not t.prompt_field:
            issues.append(located.issue(("evaluation", "tasks", i), f"task {t.name!r}: format 'text' has no prompt and "
                                        "reference of its own: give prompt_field and reference_field (JSONL keys)"))
        if getattr(spec.data, t.split) is None:
            issues.append(located.issue(("evaluation", "tasks", i, "split"), f"task {t.name!r} scores the {t.split} "
                                        f"split, but data.{t.split} is not set"))
    for i, e in enumerate(spec.hypothesis.expected):
        where = ("hypothesis", "expected", i, "metric")
        if e.metric.startswith("eval.") and e.metric not in keys:
            close = difflib.get_close_matches(e.metric, keys, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else (
                f" (declared: {', '.join(keys)})" if keys else " (declare the task under evaluation.tasks)")
            issues.append(located.issue(where, f"{e.metric!r} names no evaluation task's metric{hint}"))
        if e.vs_control and not has_control:
            issues.append(located.issue(("hypothesis", "expected", i, "vs_control"),
                                        "vs_control compares with a control run: set evaluation.control: true "
                                        "(or sweep.control: true)"))
    return issues


def _apply_profile(spec: Spec, point) -> tuple[Spec, tuple]:
    """Fill profile-controlled fields: the spec wins, then the profile, then the fallback."""
    profile = PROFILES[spec.profile]
    swept = {k for k, _ in point}
    provenance = []
    sections = {"training": {"batch_size": spec.training.batch_size, "grad_accum": spec.training.grad_accum},
                "data": {"max_length": spec.data.max_length}}
    for section, name in PROFILE_FIELDS:
        dotted = f"{section}.{name}"
        if sections[section][name] is not None:
            provenance.append((dotted, "sweep" if dotted in swept else "spec"))
        elif getattr(profile, name) is not None:
            sections[section][name] = getattr(profile, name)
            provenance.append((dotted, f"profile:{profile.name}"))
        else:
            sections[section][name] = FALLBACK[name]
            provenance.append((dotted, "default"))
    for key, _ in point:
        if key not in dict(provenance):
            provenance.append((key, "sweep"))
    updated = spec.model_copy(update={
        "training": spec.training.model_copy(update={k: sections["training"][k] for k in ("batch_size", "grad_accum")}),
        "data": spec.data.model_copy(update={"max_length": sections["data"]["max_length"]}),
    })
    return updated, tuple(sorted(provenance))


def _build_run(loaded: LoadedSpec, spec: Spec, name: str, kind: str, index: int, point, provenance, catalog,
               issues: list[SpecIssue], cache: dict | None = None, counted: dict | None = None) -> RunPlan:
    located, spec_dir = loaded.located, loaded.path.parent
    t = spec.training
    steps = StepCount(0, "control: evaluation only")
    if kind == "train" and spec.model.lora is None:
        issues.append(located.issue(("model", "lora"), f"run {name}: model.lora is null, but a training run trains "
                                    "an adapter; give the LoRA settings (or leave lora out for the defaults)"))
    if kind == "train":
        try:
            steps = count_steps(spec, spec_dir, counted)
        except UserError as exc:   # the data or tokenizer the count needs is broken: say where
            issues.append(located.issue(("data", "train"), f"run {name}: cannot count the steps of "
                                        f"{t.epochs:g} epochs: {str(exc)}"))
            steps = StepCount(None, "unknown: the data could not be tokenized")
    schedule = None
    if kind == "train" and steps.steps is not None:
        cont = spec.continuation
        if cont is not None and cont.strategy == "extend":
            start_lr = cont.start_lr or t.lr
            if cont.at_step >= steps.steps:
                issues.append(located.issue(("continuation", "at_step"), f"run {name}: at_step ({cont.at_step}) must be "
                                            f"< the new total ({steps.steps} steps)"))
            else:
                # An extension decays linearly or by a cosine (as schedule.extend does): say so in config.json.
                decay = "linear" if t.schedule.kind == "linear" else "cosine"
                schedule = ScheduleSpec(decay, t.lr, t.schedule.warmup_steps, steps.steps, t.schedule.min_lr_ratio,
                                        t.schedule.decay_fraction, start_step=cont.at_step, start_lr=start_lr)
        elif t.schedule.warmup_steps >= steps.steps:
            issues.append(located.issue(("training", "schedule", "warmup_steps"),
                                        f"run {name}: warmup_steps ({t.schedule.warmup_steps}) must be < total steps "
                                        f"({steps.steps}, {steps.source})"))
        else:
            schedule = ScheduleSpec(t.schedule.kind, t.lr, t.schedule.warmup_steps, steps.steps,
                                    t.schedule.min_lr_ratio, t.schedule.decay_fraction)
    test = spec.stages.test
    if kind == "train" and test is not None and steps.steps is not None and test.max_steps >= steps.steps:
        issues.append(located.issue(("stages", "test", "max_steps"),
                                    f"run {name}: the test stage ({test.max_steps} steps) must be shorter than the full run ({steps.steps})"))
    resources = _resolve(spec, catalog, located, issues, None, name, cache)
    if kind == "control":
        resources = control_resources(resources, catalog)
    test_resources = _resolve(spec, catalog, located, issues, "test", name, cache) if test and kind == "train" else None
    config = _trainer_config(spec, spec_dir, name, kind, index, point, steps, schedule, provenance, resources, test_resources)
    return RunPlan(spec.experiment, name, kind, index, tuple(point), spec, steps, schedule, tuple(provenance),
                   resources, test_resources, config)


def _resolve(spec: Spec, catalog, located, issues: list[SpecIssue], stage, run: str, cache: dict | None):
    """resolve_resources, once per distinct resources section: sweep points that leave it alone share it."""
    key = (id(spec.resources), id(spec.stages), stage)
    hit = cache.get(key) if cache is not None else None
    if hit is not None and hit[0] is spec.resources and hit[1] is spec.stages:
        return hit[2]
    found: list[SpecIssue] = []
    resolved = resolve_resources(spec, catalog, located, found, stage=stage, run=run)
    issues += found
    if cache is not None and not found:   # problems name their run: those are found again for every run
        cache[key] = (spec.resources, spec.stages, resolved)
    return resolved


def _trainer_config(spec: Spec, spec_dir: Path, name, kind, index, point, steps, schedule, provenance, resources,
                    test_resources) -> dict:
    """The resolved trainer config, exactly what `specc run` consumes (config.json)."""
    model = model_section(spec.model)   # kernel choices only when chosen: older configs stay as they were
    model["path"] = _rel(spec_dir, spec.model.path)
    if kind == "control":
        model["lora"] = None     # the base model alone: a control run trains no adapter
    data = spec.data.model_dump(mode="json")
    for split in ("train", "valid", "test"):
        data[split] = _rel(spec_dir, data[split])
    training = spec.training.model_dump(mode="json")
    training["total_steps"] = steps.steps
    training["total_steps_source"] = steps.source
    if steps.key:
        training["total_steps_key"] = steps.key
    stages = {}
    if test_resources is not None:
        stages["test"] = {"max_steps": spec.stages.test.max_steps, "time": test_resources.time}
    return {
        "format_version": 1,
        "specc_version": __version__,
        "experiment": spec.experiment,
        "run": name,
        "kind": kind,
        "index": index,
        "backend": spec.backend,
        "output_dir": f"runs/{spec.experiment}/{name}",
        "sweep_point": {k: v for k, v in point},
        "model": model,
        "data": data,
        "training": training,
        "schedule": schedule.to_dict() if schedule else None,
        "stages": stages,
        "resources": resources.to_dict(),
        "hypothesis": spec.hypothesis.model_dump(mode="json"),
        "profile": spec.profile,
        "provenance": dict(provenance),
        "continuation": spec.continuation.model_dump(mode="json") if spec.continuation else None,
        "tracking": spec.tracking.model_dump(mode="json") if spec.tracking else None,
        **({"evaluation": spec.evaluation.model_dump(mode="json")} if spec.evaluation else {}),
        # a custom scorer is the spec author's code, imported from the spec's directory
        **({"spec_dir": _rel(spec_dir, ".")} if spec.evaluation and any(t.custom for t in spec.evaluation.tasks) else {}),
    }
