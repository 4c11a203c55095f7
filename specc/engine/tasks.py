"""The spec's evaluation tasks for one run: scored after training (with best/), by a control run (the base
model), every N steps during training (a fixed small subset), and by `specc eval`.

A task's custom scorer is imported when the session opens, so one that does not import stops the run
before any training. Scores after training are written to RUN_DIR/eval/ and into summary.json as
`eval.<task>.<metric>`.
"""
from __future__ import annotations

import json
from pathlib import Path

from specc.errors import UserError
from specc.evaluate.prompts import task_examples
from specc.evaluate.runner import TaskResult, score_task, write_result
from specc.evaluate.scorers import make_scorer

ADAPTER_STATE = "adapter_state.safetensors"   # in best/ and adapter/: the adapter as the backend loads it back


class TaskScoring:
    def __init__(self, cfg, data, backend, model_dir: Path):
        self.tasks = list(cfg.evaluation.tasks) if cfg.evaluation else []
        self.select_best_by = cfg.evaluation.select_best_by if cfg.evaluation else "val_loss"
        self.fmt, self.data, self.backend = cfg.data.format, data, backend
        self.batch_size = max(1, cfg.training.batch_size)
        self.spec_dir = Path(cfg.raw["spec_dir"]) if cfg.raw.get("spec_dir") else None
        self.context = _context_length(model_dir)
        for task in self.tasks:           # fail before training, not after it
            make_scorer(task, self.spec_dir)
            if not data._examples.get(task.split):
                raise UserError(f"evaluation task {task.name!r} scores the {task.split} split, which this run has none of",
                                hint=f"set data.{task.split} in the spec, or the task's split to "
                                     f"{'valid' if task.split == 'test' else 'test'}")
            task_examples(task, self.fmt, data._examples[task.split], data.tokenizer)   # prompts and references exist

    def __bool__(self) -> bool:
        return bool(self.tasks)

    @property
    def selects_best(self) -> bool:
        """True when a task metric, not the validation loss, decides best/."""
        return self.select_best_by != "val_loss"

    def due(self, step: int) -> list:
        return [t for t in self.tasks if t.every and step % t.every == 0]

    def score(self, task, adapter: str, limit: int | None = None) -> TaskResult:
        return score_task(self.backend, self.data.tokenizer, task, self.fmt, self.data._examples.get(task.split) or [],
                          adapter=adapter, context=self.context, batch_size=self.batch_size, limit=limit,
                          spec_dir=self.spec_dir)

    def score_all(self, eval_dir: Path, adapter: str, only: str | None = None, say=print) -> dict:
        """Every task (or only one), written to `eval_dir` (RUN_DIR/eval); returns summary.json's "eval" entries."""
        out = {}
        for task in self.tasks:
            if only is not None and task.name != only:
                continue
            result = self.score(task, adapter)
            write_result(eval_dir, result)
            out[task.name] = result.summary_entry()
            e = result.estimate
            extra = "".join([f", {len(result.skipped)} skipped (too long)" if result.skipped else "",
                             f", {len(result.errors)} scorer error(s)" if result.errors else ""])
            say(f"eval {task.name}: {task.metric} {e.mean:.4f} (95% CI {e.low:.4f}–{e.high:.4f}, n={e.n}{extra}) "
                f"with {adapter}" if e.mean is not None else f"eval {task.name}: nothing scored{extra}")
        return out


def load_adapter_dir(backend, path: Path) -> None:
    """Load an adapter into the backend: specc's best/ or adapter/ (adapter_state.safetensors), a checkpoint
    directory, or a PEFT / mlx-lm adapter directory (trained anywhere); all through the canonical layout."""
    from safetensors.numpy import load_file

    from backends.layout import adapter_format, canonical_adapter, read_adapter_dir
    from specc.engine.travel import adapter_weights, checkpoint_adapter

    path = Path(path)
    if (path / ADAPTER_STATE).is_file():
        weights = canonical_adapter({k[len("adapter/"):]: v for k, v in load_file(str(path / ADAPTER_STATE)).items()})
        if adapter_format(path):
            _same_weights(path, weights, read_adapter_dir(path).weights)
    elif (path / "state.safetensors").is_file():
        weights = checkpoint_adapter(dict(load_file(str(path / "state.safetensors"))))
    elif adapter_format(path):
        weights = read_adapter_dir(path).weights
    else:
        raise UserError(f"{path} holds no adapter specc can load",
                        hint=f"pass a run's best/ or adapter/ ({ADAPTER_STATE}), a checkpoints/step_N directory, or a "
                             "PEFT (adapter_config.json + adapter_model.safetensors) or mlx-lm adapter directory")
    backend.load_adapter_weights(adapter_weights(backend, weights))


def _same_weights(path: Path, ours: dict, theirs: dict) -> None:
    """specc's copy and the ecosystem's file of one published adapter hold the same weights: else one of them
    is damaged (a scrambled copy would score a wrong adapter with no error)."""
    import numpy as np

    bad = sorted(k for k in ours if k not in theirs or ours[k].shape != theirs[k].shape
                 or not np.array_equal(ours[k].astype(np.float32), theirs[k].astype(np.float32)))
    if bad or set(theirs) - set(ours):
        raise UserError(f"{path}: {ADAPTER_STATE} and the adapter files beside it disagree "
                        f"({(bad or sorted(set(theirs) - set(ours)))[0]})",
                        hint="one was damaged: score a checkpoints/step_N directory instead, or export the run again")


def adapter_label(run_dir: Path, which: str, state) -> str:
    note = _read_json(Path(run_dir) / which / "specc_adapter.json") or {}
    step = note.get("step")
    return f"{which if which != 'adapter' else 'final'} (step {step})" if step is not None else which


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _context_length(model_dir: Path) -> int | None:
    config = _read_json(Path(model_dir) / "config.json") or {}
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def score_in_training(s, metrics, progress) -> None:
    """Tasks with `every`: score their fixed small subset now, log it like val_loss; one may decide best/."""
    state = s.state
    for task in s.tasks.due(state.step):
        result = s.tasks.score(task, adapter=f"step {state.step}", limit=task.every_limit)
        mean = result.estimate.mean
        metrics.write({"step": state.step, task.metric_key: mean, "eval_n": result.estimate.n})
        better = mean is not None and (state.best_score is None or mean > state.best_score)
        if s.tasks.select_best_by == task.metric_key and better:
            state.best_score, state.best_step = mean, state.step
            s.publish_best(score={task.metric_key: mean})
        progress.message(f"eval step {state.step}: {task.metric_key} {mean:.4f} on {result.estimate.n} examples"
                         + (f" (best {state.best_score:.4f} at step {state.best_step})"
                            if s.tasks.select_best_by == task.metric_key else "") if mean is not None else
                         f"eval step {state.step}: {task.metric_key}: nothing scored")


def score_after_training(s) -> dict:
    """The tasks scored with best/ (the final adapter when no evaluation beat the base model): summary entries.

    The adapter is already saved when this runs: a failure here is reported (summary "eval_error") and
    the run keeps its status; `specc eval RUN_DIR` scores it again."""
    if not s.tasks:
        return {}
    from specc.engine import distributed as dist

    if not dist.world().is_main:
        return {}
    best = s.run_dir / "best"
    try:
        if s.state.best_step and (best / ADAPTER_STATE).is_file():
            load_adapter_dir(s.backend, best)
            label = f"best (step {s.state.best_step})"
        else:
            label = f"final (step {s.state.step}; no evaluation beat the base model)"
        return {"eval": s.tasks.score_all(s.run_dir / "eval", label, say=lambda m: s.console.print(m, markup=False))}
    except UserError as exc:
        s.console.print(f"error: evaluation after training failed: {exc}\n  the adapter is saved; fix the cause and "
                        f"run `specc eval {s.run_dir}`", markup=False)
        return {"eval_error": str(exc)}


def score_lines(entries: dict | None) -> dict:
    """summary.json's "eval" entries as flat metrics: {"eval.<task>.<metric>": mean} (for metrics.jsonl, trackers)."""
    from specc.evaluate.stats import entry_metrics

    out = {}
    for task, entry in (entries or {}).items():
        for metric, value in entry_metrics(entry).items():
            out[f"eval.{task}.{metric}"] = value
    return out
