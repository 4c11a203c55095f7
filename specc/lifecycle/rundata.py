"""An experiment's runs as `specc report` and `specc calibrate --from-runs` read them: each run's config,
summary and metrics (specc/rundir.py), its metrics by name, and the baseline experiment's runs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from specc.errors import UserError
from specc.lifecycle.verdict import metric_value
from specc.rundir import RUNS_ROOT, TEST_SUFFIX, RunDir, run_dirs


@dataclass
class RunData:
    experiment: str
    name: str
    dir: Path
    config: dict
    summary: dict | None
    records: list[dict]

    @property
    def stage(self) -> str | None:
        return "test" if self.name.endswith(TEST_SUFFIX) else None

    @property
    def kind(self) -> str:
        return (self.summary or {}).get("kind") or self.config.get("kind", "train")

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status") or "running or killed"

    def metric(self, name: str) -> float | None:
        if name in ("status",):
            return None
        if name == "wall":
            return metric_value(self.summary, "wall_s", self.records)
        if name == "validated on":
            return eval_size(self.records)[1]
        if name == "steps":
            s = (self.summary or {}).get("steps") if self.status != "running" else None   # running: its start step
            return float(s) if s is not None else float(max((r.get("step", 0) for r in self.records), default=0))
        return metric_value(self.summary, name, self.records)


def load_run(run_dir: Path) -> RunData | None:
    """A run's files; None when it has no readable config.json."""
    rd = RunDir(Path(run_dir))
    config = rd.config()
    if config is None:
        return None
    return RunData(config.get("experiment", rd.experiment_dir.name), rd.name, rd.path, config, rd.summary(),
                   rd.records())


def find_experiment_dir(target: str | Path, runs_root: Path = RUNS_ROOT) -> Path:
    """An experiment directory given as a path or as a name under runs/."""
    p = Path(target)
    if p.is_dir() and any(p.glob("*/config.json")):
        return p
    if (runs_root / str(target)).is_dir():
        return runs_root / str(target)
    known = sorted(d.name for d in runs_root.iterdir() if d.is_dir()) if runs_root.is_dir() else []
    raise UserError(f"no runs for experiment {target!r} under {runs_root}/",
                    hint=("experiments with runs: " + ", ".join(known)) if known else
                    "run it first: `specc run SPEC` (or submit it), then report")


def natural_key(name: str) -> list:
    """r4 < r16 < r128: numbers inside names sort as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_experiment(exp_dir: Path, include_test: bool = False) -> list[RunData]:
    """Every run of an experiment directory, in natural name order (test stages only when asked)."""
    found = (load_run(rd.path) for rd in sorted(run_dirs(exp_dir, include_test), key=lambda rd: natural_key(rd.name)))
    return [run for run in found if run is not None]


def baseline_experiment(config: dict) -> str | None:
    """The baseline experiment's name, from the spec the run was compiled from (config.json's source)."""
    source = config.get("baseline")
    if isinstance(source, str) and source:
        return source
    spec_path = config.get("source")
    if not spec_path or not Path(spec_path).is_file():
        return None
    from specc.errors import SpecError
    from specc.plan.baseline import find_baseline_spec
    from specc.spec.validate import load_spec

    try:
        ref = load_spec(Path(spec_path)).spec.baseline
        if not ref:
            return None
        path = find_baseline_spec(ref, Path(spec_path))
        return load_spec(path).spec.experiment if path else ref
    except (SpecError, OSError):
        return None


def baseline_run(runs: list[RunData], name: str) -> RunData | None:
    """The baseline's run of the same name, else its `main` run, else its only training run."""
    by_name = {r.name: r for r in runs}
    if name in by_name:
        return by_name[name]
    if "main" in by_name:
        return by_name["main"]
    train = [r for r in runs if r.kind == "train"]
    return train[0] if len(train) == 1 else None


def eval_size(records: list[dict]) -> tuple[int | None, int | None]:
    """(validation examples, validation tokens) of the latest evaluation; None where not recorded."""
    for r in reversed(records):
        if isinstance(r.get("val_loss"), (int, float)) or "val_tokens" in r:
            ex, tok = r.get("val_examples"), r.get("val_tokens")
            return (int(ex) if isinstance(ex, (int, float)) else None, int(tok) if isinstance(tok, (int, float)) else None)
    return None, None


def eval_size_text(records: list[dict]) -> str | None:
    """'12 examples, 1,234 target tokens', from metrics.jsonl's latest evaluation."""
    ex, tok = eval_size(records)
    parts = ([f"{ex:,} example{'s' if ex != 1 else ''}"] if ex is not None else []) + \
            ([f"{tok:,} target tokens"] if tok is not None else [])
    return ", ".join(parts) or None
