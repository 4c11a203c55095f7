"""How many optimizer steps `training.epochs` means for real data: counted from the tokenized, packed rows.

plan, compile and run all use this (through `BatchPlan.steps_for_epochs`), so the three agree. An
epoch is a pass over the *rows* the data makes: with packing, several examples share a row, so an
epoch has far fewer batches than examples ÷ batch size. Counting needs the model's tokenizer and the
train split (examples left without a target are dropped even without packing); compile counts this
way whenever both are on this machine.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

_CACHE: dict = {}


@dataclass(frozen=True)
class CountInputs:
    """Everything the count depends on (a key for committed counts when the data is elsewhere)."""
    model: str
    train: str
    format: str
    max_length: int
    stride: int | None
    packing: bool
    batch_size: int
    grad_accum: int
    epochs: float
    seed: int

    def key(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def count_epoch_steps(inputs: CountInputs, model_dir: Path, train_path: Path) -> tuple[int, str]:
    """(steps, source) from tokenizing the train split with the model's tokenizer. Raises UserError for bad data."""
    from specc.data.batches import BatchPlan
    from specc.data.jsonl import read_examples
    from specc.data.tokenize import pad_token_id, tokenize_split
    from specc.data.sources import load_tokenizer

    stat = Path(train_path).stat()
    cache_key = (inputs, str(model_dir), str(train_path), stat.st_mtime_ns, stat.st_size)
    if cache_key not in _CACHE:
        tokenizer = load_tokenizer(model_dir)
        examples = read_examples(train_path, inputs.format)
        seqs, _ = tokenize_split(tokenizer, examples, inputs.format, inputs.max_length, inputs.stride)
        plan = BatchPlan(seqs, batch_size=inputs.batch_size, max_length=inputs.max_length, packing=inputs.packing,
                         pad_id=pad_token_id(tokenizer), seed=inputs.seed)
        _CACHE[cache_key] = (plan.steps_for_epochs(inputs.epochs, inputs.grad_accum),
                             plan.steps_source(inputs.epochs, inputs.grad_accum))
    return _CACHE[cache_key]
