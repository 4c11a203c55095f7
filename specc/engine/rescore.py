"""`specc eval`: score a run's tasks on demand (an old run, other weights, the base model), without training.

Nothing of the run's training state changes: no lock, no checkpoint, no metrics line. Results go to
RUN_DIR/eval/ (RUN_DIR/eval/base/ for --base) and into summary.json's "eval" ("eval_base").
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from backends import load_backend
from backends.protocol import ModelSettings, OptimizerSettings
from specc.data.sources import resolve_model_path
from specc.engine.config import RunConfig, from_dict
from specc.engine.prepare import prepare_data
from specc.engine.select import choose_backend
from specc.engine.session import _lora_settings
from specc.engine.summary import write_json_atomic
from specc.engine.tasks import ADAPTER_STATE, TaskScoring, load_adapter_dir
from specc.errors import UserError, staged


@dataclass(frozen=True)
class Rescored:
    run_dir: Path
    adapter: str
    results: dict


def configs_of(target: Path) -> list[RunConfig]:
    """A run directory's config.json, or every run of a spec (with the spec's evaluation section as it is now)."""
    target = Path(target)
    if target.is_dir():
        config = target / "config.json"
        if not config.is_file():
            raise UserError(f"{target} is not a run directory (no config.json)",
                            hint="pass runs/<experiment>/<run>, or the spec to score all of its runs")
        cfg = from_dict(json.loads(config.read_text(encoding="utf-8")), str(config))
        return [replace(cfg, output_dir=target)]   # wherever the run directory is now
    if not target.is_file():
        raise UserError(f"{target}: no such run directory or spec")
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    plan = plan_experiment(load_spec(target))
    return [from_dict(dict(r.config, source=str(target)), str(target)) for r in plan.runs]


@staged("eval")
def rescore(cfg: RunConfig, *, adapter: str = "best", base: bool = False, task: str | None = None,
            backend_name: str | None = None, say=print) -> Rescored:
    run_dir = cfg.output_dir
    if not cfg.evaluation or not cfg.evaluation.tasks:
        raise UserError(f"{cfg.experiment}/{cfg.run} declares no evaluation tasks",
                        hint="add evaluation.tasks to the spec, then `specc eval SPEC` (or recompile and run)")
    if task is not None and task not in {t.name for t in cfg.evaluation.tasks}:
        raise UserError(f"no task {task!r} in {cfg.experiment}", hint="tasks: " + ", ".join(t.name for t in cfg.evaluation.tasks))
    base = base or cfg.kind == "control"
    source, label = (None, "base model") if base else _adapter_source(run_dir, adapter)
    name, _ = choose_backend(backend_name or _writer(source) or cfg.backend)
    backend = load_backend(name)
    model_dir = resolve_model_path(cfg.model.path)
    data = prepare_data(cfg, model_dir, training=False)
    backend.setup(ModelSettings(path=model_dir, quantization=cfg.model.quantization, dtype=cfg.model.dtype),
                  None if base else _lora_settings(cfg), OptimizerSettings(), seed=cfg.training.seed)
    if source is not None:
        load_adapter_dir(backend, source)
    out_dir = run_dir / "eval" / "base" if base and cfg.kind != "control" else run_dir / "eval"
    results = TaskScoring(cfg, data, backend, model_dir).score_all(out_dir, label, only=task, say=say)
    _record(run_dir, "eval_base" if base and cfg.kind != "control" else "eval", results)
    return Rescored(run_dir, label, results)


def _adapter_source(run_dir: Path, adapter: str) -> tuple[Path, str]:
    if adapter in ("best", "final"):
        path = run_dir / ("best" if adapter == "best" else "adapter")
        if not (path / ADAPTER_STATE).is_file() and not (path / "adapter_config.json").is_file():
            raise UserError(f"{path} holds no adapter to score" + (" (the run has not finished, or is from an older "
                            "specc that did not save adapter_state.safetensors)" if path.is_dir() else ""),
                            hint="pass --adapter final, --adapter PATH (a checkpoints/step_N directory) or --base")
        note = _read(path / "specc_adapter.json")
        return path, f"{adapter} (step {note.get('step', '?')})"
    path = Path(adapter)
    if not path.is_dir():
        raise UserError(f"--adapter {adapter}: no such directory", hint="best, final, or an adapter/checkpoint directory")
    return path, str(path)


def _writer(source: Path | None) -> str | None:
    if source is None:
        return None
    note = _read(source / "specc_adapter.json") or _read(source / "trainer_state.json")
    return note.get("backend")


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _record(run_dir: Path, key: str, results: dict) -> None:
    """Merge the scores into summary.json, when the run has one (an ended run: report reads them from there)."""
    path = run_dir / "summary.json"
    summary = _read(path)
    if not summary or summary.get("status") == "running":
        return
    summary[key] = {**(summary.get(key) or {}), **results}
    write_json_atomic(path, summary)
