"""`specc diff`: what a spec change does, in resolved terms (after profiles, sweeps and the catalog).

Compares the planned runs of two versions of a spec: fields that changed in each run (one line when
every run changed alike), runs added and removed, and the effect on time limits, estimates and
GPU-hours. `--git REV` reads the old version with `git show REV:path` into a temporary file beside the
spec (so spec-relative paths resolve as they did, and problems name a line in that version).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from specc.errors import SpecError, UserError
from specc.fmt import fmt_duration
from specc.plan.baseline import field_changes, flatten

TOP_LEVEL = ("hypothesis", "baseline")


@dataclass
class RunDiff:
    name: str
    changes: list[tuple[str, object, object]]


@dataclass
class SpecDiff:
    old_label: str
    new_label: str
    experiment: tuple[str | None, str | None]
    top: list[tuple[str, object, object]] = field(default_factory=list)   # hypothesis, baseline
    common: list[tuple[str, object, object]] = field(default_factory=list)   # changed in every common run alike
    runs: list[RunDiff] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    effects: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.top or self.common or any(r.changes for r in self.runs) or self.added or self.removed
                    or self.experiment[0] != self.experiment[1])


def _resolved(run) -> dict:
    """A run's resolved spec plus what the catalog and planner decided."""
    d = run.spec.model_dump(mode="json")
    res = run.resources
    d["resolved"] = {"partition": res.partition, "qos": res.qos, "time": res.time, "total_steps": run.steps.steps,
                     "signal_lead_s": res.signal_lead_s}
    return d


def _plan(path: Path | None):
    if path is None:
        return None
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    return plan_experiment(load_spec(path))


def diff_plans(old, new, old_label: str, new_label: str) -> SpecDiff:
    out = SpecDiff(old_label, new_label, (old.experiment if old else None, new.experiment if new else None))
    old_runs = {r.name: r for r in old.runs} if old else {}
    new_runs = {r.name: r for r in new.runs} if new else {}
    out.added = [n for n in new_runs if n not in old_runs]
    out.removed = [n for n in old_runs if n not in new_runs]
    if old and new:
        a, b = old.spec.model_dump(mode="json"), new.spec.model_dump(mode="json")
        fa, fb = flatten({k: a.get(k) for k in TOP_LEVEL}), flatten({k: b.get(k) for k in TOP_LEVEL})
        out.top = [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    per_run = []
    pairs = [(old_runs[n], new_runs[n], n) for n in new_runs if n in old_runs]
    if not pairs and old_runs and new_runs:
        # Renamed runs (e.g. a single run became a sweep): compare each new run with the old run in its place.
        old_train = [r for r in old_runs.values() if r.kind == "train"] or list(old_runs.values())
        new_train = [r for r in new_runs.values() if r.kind == "train"]
        pairs = [(old_train[min(i, len(old_train) - 1)], r, f"{r.name} (vs {old_train[min(i, len(old_train) - 1)].name})")
                 for i, r in enumerate(new_train)]
    for a, b, label in pairs:
        per_run.append(RunDiff(label, field_changes(_resolved(a), _resolved(b))))
    if per_run:
        sets = [set(map(_key, r.changes)) for r in per_run]
        shared = set.intersection(*sets) if sets else set()
        out.common = [c for c in per_run[0].changes if _key(c) in shared]
        for r in per_run:
            r.changes = [c for c in r.changes if _key(c) not in shared]
    out.runs = per_run
    out.effects = _effects(old, new)
    return out


def _key(change) -> str:
    return repr(change)


def _total(plan) -> tuple[float | None, float | None, str, float]:
    """(estimated job hours, GPU-hours, sources, sum of time limits in hours) over the plan's runs."""
    from specc.spec.model import parse_time

    if plan is None:
        return 0.0, 0.0, "", 0.0
    hours = gpu = 0.0
    sources, missing = set(), 0
    limits = 0.0
    for run in plan.runs:
        limits += parse_time(run.resources.time) / 3600
        e = run.config.get("estimate") or {}
        if e.get("total_s"):
            hours += e["total_s"] / 3600
            gpu += e["total_s"] / 3600 * run.resources.gpus
            sources.add(e["source"] + (", unmeasured" if e["source"] == "declared" else ""))
        elif run.kind == "train":
            missing += 1
    if missing and not sources:
        return None, None, "", limits
    return hours, gpu, "/".join(sorted(sources)) + (f"; {missing} run(s) not estimated" if missing else ""), limits


def _effects(old, new) -> list[str]:
    oh, og, osrc, olim = _total(old)
    nh, ng, nsrc, nlim = _total(new)
    out = []
    if oh is not None and nh is not None and (oh or nh) and (abs(oh - nh) > 1e-9 or osrc != nsrc):
        out.append(f"estimated time {fmt_duration(oh * 3600)} → {fmt_duration(nh * 3600)} "
                   f"({osrc or 'none'} → {nsrc or 'none'})")
        if og or ng:
            out.append(f"GPU-hours {og:.1f} → {ng:.1f}")
    elif (oh is None) != (nh is None):
        out.append(f"estimate: {'none' if oh is None else fmt_duration(oh * 3600)} → "
                   f"{'none' if nh is None else fmt_duration(nh * 3600)}")
    if abs(olim - nlim) > 1e-9:
        out.append(f"requested time (sum of limits) {olim:.2f} h → {nlim:.2f} h")
    if old and new and len(old.runs) != len(new.runs):
        out.append(f"runs {len(old.runs)} → {len(new.runs)}")
    return out


def diff_files(old_path: Path | None, new_path: Path | None, old_label: str | None = None,
               new_label: str | None = None) -> SpecDiff:
    return diff_plans(_plan(old_path), _plan(new_path), old_label or str(old_path), new_label or str(new_path))


# --- git -----------------------------------------------------------------------------------------------

def _git(*args: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise UserError("git is not installed", hint="install git, or compare two files: specc diff OLD.yaml NEW.yaml") from None
    if proc.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed: {proc.stderr.strip()}",
                        hint="is this a git repository, and does the revision exist (git fetch origin main)?")
    return proc.stdout


def changed_specs(rev: str) -> list[Path]:
    """Spec files (YAML with an `experiment:` key) changed between REV and the working tree."""
    names = _git("diff", "--name-only", rev, "--", "*.yaml", "*.yml").splitlines()
    root = Path(_git("rev-parse", "--show-toplevel").strip())
    out = []
    for n in names:
        p = Path(os.path.relpath(root / n))
        text = p.read_text(encoding="utf-8", errors="replace") if p.is_file() else _show(rev, n, root) or ""
        if any(line.startswith("experiment:") for line in text.splitlines()):
            out.append(p)
    return out


def _show(rev: str, repo_path: str, root: Path) -> str | None:
    proc = subprocess.run(["git", "show", f"{rev}:{repo_path}"], capture_output=True, text=True, cwd=root)
    return proc.stdout if proc.returncode == 0 else None


def diff_git(rev: str, spec: Path) -> SpecDiff:
    """The spec at REV against the working tree."""
    root = Path(_git("rev-parse", "--show-toplevel").strip()).resolve()
    spec_abs = spec.resolve() if spec.exists() else (Path.cwd() / spec).resolve()
    repo_path = spec_abs.relative_to(root).as_posix()
    text = _show(rev, repo_path, root)
    old_plan = None
    label = f"{rev}:{repo_path}"
    if text is not None:
        tmp = spec_abs.parent / f".{spec_abs.stem}.specc-diff-{os.getpid()}{spec_abs.suffix}"
        tmp.write_text(text, encoding="utf-8")
        try:
            old_plan = _plan(Path(os.path.relpath(tmp)))
        except SpecError as exc:
            for i in exc.issues:
                object.__setattr__(i, "file", label)
            raise
        finally:
            tmp.unlink(missing_ok=True)
    new_plan = _plan(spec) if spec.exists() else None
    return diff_plans(old_plan, new_plan, label if text is not None else f"{label} (absent)",
                      str(spec) if spec.exists() else f"{spec} (deleted)")


# --- rendering -----------------------------------------------------------------------------------------

def _change_text(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return "—" if v is None else str(v)


def render(d: SpecDiff, markdown: bool = False) -> str:
    code = (lambda s: f"`{s}`") if markdown else (lambda s: s)
    lines = [("### " if markdown else "") + f"{code(d.new_label)} vs {code(d.old_label)}"]
    if d.empty:
        lines.append("no change in any resolved field.")
        return "\n".join(lines) + "\n"
    if d.experiment[0] != d.experiment[1]:
        lines.append(f"- experiment: {d.experiment[0] or '—'} → {d.experiment[1] or '—'}")
    for k, a, b in d.top:
        lines.append(f"- {code(k)}: {_change_text(a)} → {_change_text(b)}")
    if d.common:
        n = len(d.runs)
        lines.append(f"- every run ({n}):" if n > 1 else "- changed:")
        lines += [f"  - {code(k)}: {_change_text(a)} → {_change_text(b)}" for k, a, b in d.common]
    for r in d.runs:
        if r.changes:
            lines.append(f"- run {code(r.name)}:")
            lines += [f"  - {code(k)}: {_change_text(a)} → {_change_text(b)}" for k, a, b in r.changes]
    if d.added:
        lines.append(f"- runs added ({len(d.added)}): " + ", ".join(map(code, d.added)))
    if d.removed:
        lines.append(f"- runs removed ({len(d.removed)}): " + ", ".join(map(code, d.removed)))
    if d.effects:
        lines.append("- effect: " + "; ".join(d.effects))
    return "\n".join(lines) + "\n"


def diff_text(specs: list[Path] | None, git: str | None = None, markdown: bool = False) -> str:
    """What `specc diff` prints: OLD NEW, or with `git` the given specs (default: those changed) against REV."""
    out = []
    if git:
        targets = list(specs or []) or changed_specs(git)
        diffs = [diff_git(git, s) for s in targets]
        if markdown:
            out.append("## specc diff against " + git + "\n\n")
        if not diffs:
            out.append(f"no spec changed since {git}\n")
    else:
        if not specs or len(specs) != 2:
            raise UserError("give two specs (OLD.yaml NEW.yaml), or --git REV [SPEC...]")
        diffs = [diff_files(specs[0], specs[1])]
    out += [render(d, markdown) + ("\n" if markdown else "") for d in diffs]
    return "".join(out)
