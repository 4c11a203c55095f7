"""Score one task: prompts → backend.generate → decoded text cut at the stop strings → scorer → mean and 95% CI.

Nothing here knows which backend runs the model. Prompts that do not fit the model's context with
their answer are skipped and counted; a scorer that raises on an example is counted as an error for
that example (named in the result), and the other examples keep their scores.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from backends.protocol import GenerationSettings
from specc.evaluate.prompts import EvalExample, task_examples
from specc.evaluate.scorers import make_scorer
from specc.evaluate.stats import Estimate, mean_ci
from specc.errors import UserError

MAX_ERRORS_SHOWN = 5


@dataclass
class TaskResult:
    task: str
    metric: str
    metric_key: str             # eval.<task>.<metric>
    estimate: Estimate
    adapter: str                # which weights answered: "best (step 150)", "final (step 200)", "base model", a path
    decoding: dict
    split: str
    n_examples: int             # asked for (after the limit)
    skipped: list[dict] = field(default_factory=list)     # {"index", "reason"}: prompt too long for the context
    errors: list[dict] = field(default_factory=list)      # {"index", "error"}: the scorer raised
    samples: list[dict] = field(default_factory=list)     # {"index", "prompt", "reference", "prediction", "score"}
    generate_s: float = 0.0
    new_tokens: int = 0

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "metric_key": self.metric_key, **self.estimate.to_dict(),
                "split": self.split, "examples": self.n_examples, "skipped": len(self.skipped),
                "skipped_reasons": self.skipped[:MAX_ERRORS_SHOWN], "scorer_errors": len(self.errors),
                "scorer_error_examples": self.errors[:MAX_ERRORS_SHOWN], "adapter": self.adapter,
                "decoding": self.decoding, "generate_s": round(self.generate_s, 4), "new_tokens": self.new_tokens,
                "tokens_per_s": round(self.new_tokens / self.generate_s, 2) if self.generate_s > 0 else None}

    def summary_entry(self) -> dict:
        """What summary.json carries under eval.<task>: the metric by name (what expectations read) and its CI."""
        return {self.metric: self.estimate.mean, "ci95": [self.estimate.low, self.estimate.high],
                "ci_method": self.estimate.method, "n": self.estimate.n, "skipped": len(self.skipped),
                "scorer_errors": len(self.errors), "adapter": self.adapter}


def generation_settings(task, tokenizer, batch_size: int) -> GenerationSettings:
    from specc.data.tokenize import chat_token_ids

    eos = {int(t) for t in (tokenizer.eos_token_id,) if t is not None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    stop_ids = tuple(tuple(ids) for ids in chat_token_ids(tokenizer, list(task.stop)) if ids)
    d = task.decoding
    return GenerationSettings(max_new_tokens=task.max_new_tokens, temperature=d.temperature, top_p=d.top_p,
                              seed=d.seed, batch_size=batch_size, eos_ids=tuple(sorted(eos)), pad_id=int(pad),
                              stop_ids=stop_ids)


def score_task(backend, tokenizer, task, fmt: str, examples: list[dict], *, adapter: str, context: int | None,
               batch_size: int = 16, limit: int | None = None, spec_dir: Path | None = None) -> TaskResult:
    """Generate an answer for each of the task's examples and score it."""
    if not examples:
        raise UserError(f"task {task.name!r}: the {task.split} split has no examples",
                        hint=f"set data.{task.split} in the spec, or the task's split to the other one")
    scorer = make_scorer(task, spec_dir)
    chosen = task_examples(task, fmt, examples, tokenizer, limit)
    fits, skipped = _within_context(chosen, task.max_new_tokens, context)
    settings = generation_settings(task, tokenizer, batch_size)
    t0 = time.perf_counter()
    outputs = backend.generate([e.prompt_ids for e in fits], settings) if fits else []
    generate_s = time.perf_counter() - t0
    scores, errors, samples = [], [], []
    for e, ids in zip(fits, outputs):
        prediction = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), task.stop)
        try:
            score = float(scorer(prediction, e.reference, e.example))
            scores.append(score)
        except Exception as exc:   # the spec author's scorer: keep the other examples' scores
            score = None
            errors.append({"index": e.index, "error": f"{type(exc).__name__}: {exc}"})
        samples.append({"index": e.index, "prompt": e.prompt, "reference": e.reference, "prediction": prediction,
                        "score": score})
    if fits and not scores:
        raise UserError(f"task {task.name!r}: the scorer failed on every example (first, line {errors[0]['index'] + 1}: "
                        f"{errors[0]['error']})", hint="fix the scorer; nothing was scored")
    return TaskResult(task.name, task.metric, task.metric_key, mean_ci(scores), adapter, task.decoding.model_dump(),
                      task.split, len(chosen), skipped, errors, samples, generate_s, sum(len(o) for o in outputs))


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The answer up to the first stop string (generation may run past it by a few tokens)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _within_context(chosen: list[EvalExample], max_new: int, context: int | None):
    if context is None:
        return chosen, []
    fits = [e for e in chosen if len(e.prompt_ids) + max_new <= context]
    skipped = [{"index": e.index, "reason": f"prompt of {len(e.prompt_ids)} tokens + {max_new} new tokens exceeds "
                                            f"the model's context of {context}"}
               for e in chosen if len(e.prompt_ids) + max_new > context]
    return fits, skipped


def write_result(out: Path, result: TaskResult) -> Path:
    """<out>/<task>.json and <task>.samples.jsonl (prompt, reference, prediction, score: read the failures);
    `out` is RUN_DIR/eval (RUN_DIR/eval/base for the base model of a training run)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{result.task}.samples.jsonl.tmp"
    tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in result.samples), encoding="utf-8")
    tmp.replace(out / f"{result.task}.samples.jsonl")
    tmp = out / f"{result.task}.json.tmp"
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / f"{result.task}.json")
    return out / f"{result.task}.json"
