"""emit: render an ExperimentPlan into generated/<experiment>/, deterministically, or check it is current."""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from specc.emit.sbatch import environment_lines, job_flags, q, render_flags, safe
from specc.errors import staged
from specc.plan.baseline import Baseline, resolve_baseline
from specc.plan.jobs import JobGroup, job_groups
from specc.plan.runs import ExperimentPlan, RunPlan
from specc.plan.schedule import schedule_csv
from specc.spec.model import model_section
from specc.spec.validate import LoadedSpec

COMPARATOR_TEXT = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "=", "within": "within"}


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("specc.emit", "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
    )


class _Unusual(Exception):
    pass


_encode_str = json.encoder.encode_basestring   # what json.dumps uses with ensure_ascii=False


def json_text(obj) -> str:
    """`json.dumps(obj, indent=2, ensure_ascii=False)`, byte for byte, but several times faster.

    json's indenting encoder is pure Python and dominated the compile of a large sweep (one config per run).
    Anything unusual (non-string keys, NaN, subclasses) goes to json.dumps itself.
    """
    try:
        return _json(obj, "\n")
    except _Unusual:
        return json.dumps(obj, indent=2, ensure_ascii=False)


def _float(o: float) -> str:
    if o != o or o in (float("inf"), float("-inf")):
        raise _Unusual
    return float.__repr__(o)


_SCALARS = {str: _encode_str, int: int.__repr__, float: _float, bool: lambda o: "true" if o else "false",
            type(None): lambda o: "null"}


def _json(o, nl: str) -> str:
    scalar = _SCALARS.get(type(o))
    if scalar is not None:
        return scalar(o)
    inner = nl + "  "
    t = type(o)
    if t is dict:
        if not o:
            return "{}"
        parts = []
        for k, v in o.items():
            if type(k) is not str:
                raise _Unusual
            scalar = _SCALARS.get(type(v))   # most values are scalars: no call for them
            parts.append(_encode_str(k) + ": " + (scalar(v) if scalar is not None else _json(v, inner)))
        return "{" + inner + ("," + inner).join(parts) + nl + "}"
    if t is list or t is tuple:
        if not o:
            return "[]"
        return "[" + inner + ("," + inner).join([_json(v, inner) for v in o]) + nl + "]"
    raise _Unusual


def source_name(path: Path) -> str:
    p = Path(os.path.relpath(path)) if not Path(path).is_absolute() or str(path).startswith(os.getcwd()) else Path(path)
    return p.as_posix()


def run_files(run: RunPlan, source: str) -> dict[str, str]:
    """config.json, schedule.csv and the sbatch scripts of one run."""
    exp, name = run.experiment, run.name
    config = dict(run.config, source=source)
    files = {f"{name}/config.json": json_text(config) + "\n"}
    if run.schedule is not None:
        files[f"{name}/schedule.csv"] = schedule_csv(run.schedule)
    config_path = f"generated/{exp}/{name}/config.json"
    log = f"runs/{exp}/logs/{name}-%j.out"
    files[f"{name}/train.sbatch"] = job_script(run, source, stage=None, select_config=f"CONFIG={q(config_path)}",
                                               log=log, job_name=f"{exp}.{name}",
                                               what=f"Run {name} of {exp}: the full run.",
                                               gate=run.test_resources is not None)
    if run.test_resources is not None:
        files[f"{name}/test.sbatch"] = job_script(run, source, stage="test", select_config=f"CONFIG={q(config_path)}",
                                                  log=f"runs/{exp}/logs/{name}.test-%j.out", job_name=f"{exp}.{name}.test",
                                                  what=f"Run {name} of {exp}: the test stage that gates the full run.")
    return files


def job_script(run: RunPlan, source: str, *, stage, select_config, log, job_name, what, array=None, gate=False) -> str:
    res = run.test_resources if stage == "test" else run.resources
    distributed = res.gpus > 1 or res.nodes > 1
    gpus_per_node = -(-res.gpus // res.nodes) if res.gpus else 1
    return _env().get_template("job.sbatch.j2").render(
        source=safe(source), what=safe(what),   # comment lines: a newline in a spec's path would start a command
        sbatch_lines=render_flags(job_flags(run, stage=stage, log=log, job_name=job_name, array=array)),
        environment=environment_lines(res),
        max_requeues=int(res.max_requeues), select_config=select_config,
        stage_arg=" --stage test" if stage == "test" else "", gate=gate,
        distributed=distributed, gpus_per_node=gpus_per_node, cpus_per_rank=max(1, res.cpus // gpus_per_node),
        overcommit=" --overcommit" if res.cpus < gpus_per_node else "",
    )


def array_script(plan: ExperimentPlan, group: JobGroup, source: str, stage: str | None) -> str:
    """One job array over the runs of one shape (plan/jobs.py), indexed by SLURM_ARRAY_TASK_ID."""
    runs = list(group.tested if stage else group.runs)
    # The array's limits must fit its largest member (one shape: they are the same).
    lead = max(runs, key=lambda r: _seconds((r.test_resources if stage else r.resources).time))
    configs = "\n".join(f"  {q(f'generated/{plan.experiment}/{r.name}/config.json')}" for r in runs)
    select = f"CONFIGS=(\n{configs}\n)\nCONFIG=\"${{CONFIGS[${{SLURM_ARRAY_TASK_ID:-0}}]}}\""
    limit = plan.spec.sweep.max_concurrent if plan.spec.sweep else None
    array = f"0-{len(runs) - 1}" + (f"%{limit}" if limit else "")
    # One array: the job name is the experiment's, as it always was; several carry the array's name.
    single = len(job_groups(plan)) == 1
    suffix = ("" if group.name == "array" else f".{group.name}") + (".test" if stage else "")
    # Every full task checks its own run's test stage (a control run has none: the gate passes it).
    gate = stage is None and any(r.test_resources is not None for r in runs)
    only_training_array = sum(g.kind == "train" for g in job_groups(plan)) == 1 and group.kind == "train"
    if single or (stage and only_training_array):
        what = f"Every run of {plan.experiment} as one job array" + (" (test stage)." if stage else ".")
    elif stage:
        what = f"The test stages of the {len(runs)} run(s) of {plan.experiment} in {group.name}.sbatch."
    else:
        what = f"The {len(runs)} run(s) of {plan.experiment} in {group.name}: {group.why}."
    return job_script(lead, source, stage=stage, select_config=select, array=array, gate=gate,
                      log=f"runs/{plan.experiment}/logs/%x-%A_%a.out", job_name=f"{plan.experiment}{suffix}",
                      what=what)


def job_settings(res) -> list[tuple[str, str, str]]:
    """(setting, value, where it came from) for plan.md: account, mail, env, setup lines, extra sbatch options."""
    src = dict(res.settings_from)
    rows = [(f, v, src.get(f, "")) for f, v in (("account", res.account), ("constraint", res.constraint)) if v]
    if res.exclusive:
        rows.append(("exclusive", "yes", src.get("exclusive", "")))
    if res.mail_user:
        rows.append(("mail", f"{res.mail_user} ({res.mail_type})", src.get("mail", "")))
    rows += [(f"env {k}", v, src.get(f"env.{k}", "")) for k, v in res.env]
    rows += [(f"setup {i}", line, src.get(f"setup.{i}", "")) for i, line in enumerate(res.setup, 1)]
    rows += [(f"--{k}", v or "(flag)", src.get(f"extra_sbatch.{k}", "")) for k, v in res.extra_sbatch]
    return [(n, str(v).replace("|", "\\|").replace("`", "'"), s) for n, v, s in rows]


def _seconds(t: str) -> int:
    from specc.spec.model import parse_time
    return parse_time(t)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return "—" if v is None else str(v)


def plan_markdown(loaded: LoadedSpec, plan: ExperimentPlan, source: str, baseline: Baseline | None,
                  estimates: str) -> str:
    spec = plan.spec
    hyp = spec.hypothesis
    expected = []
    for e in hyp.expected:
        target = f"{e.target:g}" + (" × baseline" if e.vs_baseline else "")
        tol = f"±{e.tolerance:g}" + (" (relative)" if e.relative else "") if e.tolerance else "—"
        expected.append({"metric": e.metric, "text": f"{COMPARATOR_TEXT[e.comparator]} {target}", "tolerance": tol})
    rows, notes = [], []
    for r in plan.runs:
        t, d = r.spec.training, r.spec.data
        train = r.kind == "train"
        steps = "—" if not train else (f"{r.steps.steps:,}" if r.steps.steps is not None else "at run start")
        if train and not r.steps.source.startswith("declared"):
            notes.append(f"`{r.name}`: steps {r.steps.source}.")
        rows.append({
            "index": r.index, "name": r.name, "kind": r.kind, "model": f"{r.spec.model.size} `{r.spec.model.path}`",
            "rank": r.spec.model.lora.rank if train else "—",
            "batch": f"{t.batch_size} × {t.grad_accum}", "max_length": d.max_length, "steps": steps,
            "tokens": f"≤ {t.batch_size * t.grad_accum * d.max_length:,}" if train else "—",
            "partition": r.resources.partition, "time": r.resources.time,
        })
    first = next((r for r in plan.runs if r.kind == "train"), plan.runs[0])
    resolved = dict(first.spec.model_dump(mode="json"), model=model_section(first.spec.model))
    provenance = []
    for dotted, src in first.provenance:
        value = resolved
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        provenance.append((dotted, _fmt(value), src))
    sweep = None
    if spec.sweep:
        n_control = sum(r.kind == "control" for r in plan.runs)
        sweep = {"axes": " × ".join(f"`{k}` ({len(v)})" for k, v in spec.sweep.matrix.items()),
                 "n_train": len(plan.runs) - n_control, "n_control": n_control, "template": spec.sweep.name,
                 "max_concurrent": spec.sweep.max_concurrent}
    s = first.schedule
    if s is None:
        schedule_text = ("Total steps come from the data at run start, so the schedule is resolved then; "
                         f"shape {spec.training.schedule.kind}, peak {spec.training.lr:g}, "
                         f"warmup {spec.training.schedule.warmup_steps}, min ratio {spec.training.schedule.min_lr_ratio:g}.")
    else:
        schedule_text = (f"`{s.kind}`: warmup {s.warmup_steps} steps to peak {s.peak_lr:g}, then "
                         + ("constant" if s.kind == "constant" else f"decay to {s.min_lr:g} ({s.min_lr_ratio:g} × peak) at step {s.total_steps - 1}")
                         + f"; {s.total_steps:,} steps in all (run `{first.name}`). Key steps: `{first.name}/schedule.csv`.")
    test = None
    if first.test_resources is not None:
        test = {"max_steps": spec.stages.test.max_steps, "partition": first.test_resources.partition,
                "time": first.test_resources.time}
    return _env().get_template("plan.md.j2").render(
        experiment=plan.experiment, source=source, statement=hyp.statement.strip(), expected=expected,
        falsified_if=hyp.falsified_if, baseline=baseline, declared_changes=hyp.changes,
        computed_changes=[(c, _fmt(a), _fmt(b)) for c, a, b in (baseline.changes if baseline else ())],
        runs=rows, step_notes=notes[:5] + ([f"… and {len(notes) - 5} more"] if len(notes) > 5 else []),
        sweep=sweep, profile=spec.profile, provenance=provenance, schedule_text=schedule_text,
        resources=first.resources, job_settings=job_settings(first.resources), catalog=plan.catalog_source,
        jobs=[{"name": g.name, "runs": ", ".join(f"`{r.name}`" for r in g.runs[:4]) + (
            f" and {len(g.runs) - 4} more" if len(g.runs) > 4 else ""), "n": len(g.runs), "why": g.why,
               "test": g.test_name if g.tested else None} for g in job_groups(plan)] if spec.sweep else [], test_stage=test, estimates=estimates,
        warnings=list(plan.warnings),
    )


@staged("emit")
def render_experiment(loaded: LoadedSpec, plan: ExperimentPlan) -> dict[str, str]:
    """Every artifact of one experiment: {path relative to generated/<experiment>/: content}."""
    from specc.estimate.markdown import estimates_markdown

    source = source_name(loaded.path)
    baseline = None
    if plan.spec.baseline:
        first = next((r for r in plan.runs if r.kind == "train"), plan.runs[0])
        baseline = resolve_baseline(plan.spec.baseline, loaded.path, first.spec)
    files = {"plan.md": plan_markdown(loaded, plan, source, baseline, estimates_markdown(plan))}
    for run in plan.runs:
        files.update(run_files(run, source))
    if plan.spec.sweep is not None:
        for group in job_groups(plan):
            files[f"{group.name}.sbatch"] = array_script(plan, group, source, stage=None)
            if group.tested:
                files[f"{group.test_name}.sbatch"] = array_script(plan, group, source, stage="test")
    return files


@dataclass
class WriteResult:
    written: list[Path]
    unchanged: int
    removed: list[Path]


def _scan(root: Path) -> tuple[set[str], set[str]]:
    """Files and directories under root, relative to it (one walk; a large sweep has thousands)."""
    files, dirs = set(), set()
    if not root.is_dir():
        return files, dirs
    stack = [(str(root), "")]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                name = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    dirs.add(name)
                    stack.append((entry.path, name + "/"))
                elif entry.is_file():
                    files.add(name)
    return files, dirs


def existing_files(root: Path) -> set[str]:
    return _scan(root)[0]


def stale_diff(root: Path, files: dict[str, str]) -> list[str]:
    """Unified diff lines between generated/<exp>/ on disk and what the spec produces now."""
    out = []
    for rel in sorted(set(files) | existing_files(root)):
        path = root / rel
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        new = files.get(rel)
        if old == new:
            continue
        out += difflib.unified_diff((old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
                                    fromfile=f"a/{path.as_posix()}" if old is not None else "/dev/null",
                                    tofile=f"b/{path.as_posix()}" if new is not None else "/dev/null")
    return out


@staged("emit")
def write_files(root: Path, files: dict[str, str]) -> WriteResult:
    """Write changed files atomically and remove files the spec no longer produces."""
    written, unchanged, removed = [], 0, []
    on_disk, dirs_on_disk = _scan(root)
    base = os.fspath(root)
    made: set[str] = set()
    suffix = f".tmp-{os.getpid()}"
    for rel, content in sorted(files.items()):   # plain strings, not Paths: a sweep writes thousands of files
        path = os.path.join(base, rel)
        if rel in on_disk:
            with open(path, encoding="utf-8") as fh:
                if fh.read() == content:
                    unchanged += 1
                    continue
        parent, name = os.path.split(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        # A file that exists is replaced atomically (write a temporary file, rename it over). A new one is
        # written in place: nothing reads it yet, and a write cut short is stale to `--check` and redone.
        target = os.path.join(parent, f".{name}{suffix}") if rel in on_disk else path
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        if name.endswith(".sbatch"):
            os.fchmod(fd, 0o755)
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        if target != path:
            os.replace(target, path)
        written.append(Path(path))
    for rel in sorted(on_disk - set(files)):
        (root / rel).unlink()
        removed.append(root / rel)
    # Directories that held nothing the spec produces may now be empty.
    kept = {rel.rsplit("/", i)[0] for rel in files for i in range(1, rel.count("/") + 1)}
    for rel in sorted(dirs_on_disk - kept, key=lambda d: -d.count("/")):
        d = root / rel
        if not any(d.iterdir()):
            d.rmdir()
    return WriteResult(written, unchanged, removed)


def committed_step_counts(out_dir: Path) -> dict[str, tuple[int, str]]:
    """Step counts earlier compiles made from tokenized data (config.json total_steps_key), so a machine
    without the data compiles the same numbers (see specc.plan.steps.count_steps)."""
    found: dict[str, tuple[int, str]] = {}
    for path in sorted(Path(out_dir).glob("*/*/config.json")):
        try:
            t = json.loads(path.read_text(encoding="utf-8")).get("training") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(t, dict) and t.get("total_steps_key") and isinstance(t.get("total_steps"), int):
            found[t["total_steps_key"]] = (t["total_steps"], str(t.get("total_steps_source", "")))
    return found
