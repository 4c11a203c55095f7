"""How many optimizer steps a run takes, and where the number came from (declared, counted, estimated)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from specc.data.batches import epoch_steps
from specc.data.steps import CountInputs
from specc.spec.model import Spec


@dataclass(frozen=True)
class StepCount:
    steps: int | None           # optimizer steps, None when only the data can tell
    source: str                 # "declared (max_steps)", "counted: ... from the tokenized train split", "estimated: ..."
    key: str | None = None      # counted from tokenized data: the inputs' digest (config.json total_steps_key)


def count_steps(spec: Spec, spec_dir: Path, counted: dict[str, tuple[int, str]] | None = None) -> StepCount:
    """Optimizer steps of a run, and where the number came from.

    For `epochs`, the steps follow the rows the tokenized data makes (packed rows with packing): counted
    with the model's tokenizer when the model and train split are on this machine, else taken from
    `counted` (what an earlier compile counted for the same inputs, so `compile --check` agrees on a
    machine without the data), else estimated and marked so (the run counts them exactly)."""
    t, d = spec.training, spec.data
    if t.max_steps is not None:
        return StepCount(t.max_steps, "declared (training.max_steps)")
    inputs = _count_inputs(spec)
    exact = _tokenized_count(spec, spec_dir, inputs)
    if exact is not None:
        return StepCount(exact[0], exact[1], inputs.key())
    if counted and inputs.key() in counted:
        steps, source = counted[inputs.key()]
        return StepCount(steps, source, inputs.key())
    samples, source = d.samples, "declared data.samples"
    train = spec_dir / d.train if samples is None and not d.train.startswith("builtin:") else None
    if train is not None and train.is_file():
        with open(train, "rb") as fh:
            samples = sum(1 for line in fh if line.strip())
        source = f"{samples} lines in {d.train}"
    if samples is None:
        return StepCount(None, "from the data at run start (epochs × batches per epoch)")
    if d.packing and d.avg_tokens:
        rows = math.ceil(samples * d.avg_tokens / d.max_length)
        what = f"{source}, packed at avg_tokens={d.avg_tokens:g}"
    else:
        rows = samples
        what = f"{source}, one sample per row" + (" (packing makes it fewer)" if d.packing else "")
    per_epoch = math.ceil(rows / t.batch_size)
    steps = epoch_steps(per_epoch * math.floor(t.epochs), per_epoch, t.epochs, t.grad_accum)
    return StepCount(steps, f"estimated: {what}; the run counts the tokenized rows exactly")


def _count_inputs(spec: Spec) -> CountInputs:
    t, d = spec.training, spec.data
    return CountInputs(spec.model.path, d.train, d.format, d.max_length, d.stride, d.packing, t.batch_size,
                       t.grad_accum, float(t.epochs), t.seed)


def _tokenized_count(spec: Spec, spec_dir: Path, inputs: CountInputs) -> tuple[int, str] | None:
    """The exact count, when the model and the train split are on this machine (builtin ones always are)."""
    from specc.data.steps import count_epoch_steps

    model, train = spec.model.path, spec.data.train
    model_dir = None if model.startswith("builtin:") else (spec_dir / model)
    train_path = None if train.startswith("builtin:") else (spec_dir / train)
    if (model_dir is not None and not (model_dir / "config.json").is_file()) or \
            (train_path is not None and not train_path.is_file()):
        return None
    from specc.data.sources import resolve_data, resolve_model_path

    return count_epoch_steps(inputs, model_dir or resolve_model_path(model), train_path or resolve_data(train, "train"))
