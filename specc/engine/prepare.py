"""Before the first step: resolve the model and data, verify and tokenize the data, size the run.

Both backends get exactly what this builds, so a spec gives the same batches on MLX and on CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from specc.data.batches import BatchPlan, eval_batches, eval_example_indices
from specc.data.jsonl import DatasetReport, load_dataset
from specc.data.sources import load_tokenizer, resolve_data
from specc.data.tokenize import TokenizationReport, pad_token_id, tokenize_split
from specc.engine.config import RunConfig

SPLITS = ("train", "valid", "test")


def resolve_data_paths(cfg: RunConfig) -> dict[str, Path | None]:
    """Every split of a run's data as a local path (builtin: data generated on first use)."""
    return {split: resolve_data(getattr(cfg.data, split), split) for split in SPLITS}


@dataclass
class PreparedData:
    tokenizer: object
    dataset: DatasetReport
    train_plan: BatchPlan | None
    train_report: TokenizationReport | None
    total_steps: int
    steps_source: str
    pad_id: int
    _examples: dict = field(repr=False, default_factory=dict)
    _eval_cache: dict = field(repr=False, default_factory=dict)
    _cfg: RunConfig | None = field(repr=False, default=None)

    def eval_batches(self, split: str = "valid"):
        """Batches of the split's evaluation sample (training.eval_examples, the same for every batch size),
        tokenized lazily on first use, then kept."""
        if split not in self._eval_cache:
            c = self._cfg
            chosen = self.eval_examples(split)
            seqs, _ = tokenize_split(self.tokenizer, chosen, c.data.format, c.data.max_length, c.data.stride) \
                if chosen else ([], None)
            self._eval_cache[split] = eval_batches(seqs, batch_size=c.training.batch_size, max_length=c.data.max_length,
                                                   packing=c.data.packing, pad_id=self.pad_id)
        return self._eval_cache[split]

    def eval_examples(self, split: str = "valid") -> list[dict]:
        """The examples an evaluation of `split` uses: a fixed sample of training.eval_examples (see
        specc.data.batches.eval_example_indices), identical across the runs of an experiment and its baseline."""
        examples = self._examples.get(split) or []
        return [examples[i] for i in eval_example_indices(len(examples), self._cfg.training.eval_examples)]


def prepare_data(cfg: RunConfig, model_dir: Path, training: bool = True) -> PreparedData:
    """Verify every split (all problems at once), tokenize train, and fix the number of steps.

    `training=False` (scoring only: control runs, `specc eval`) reads the splits but tokenizes nothing."""
    tokenizer = load_tokenizer(model_dir)
    paths = resolve_data_paths(cfg)
    examples, report = load_dataset(paths, cfg.data.format)
    pad_id = pad_token_id(tokenizer)
    d, t = cfg.data, cfg.training
    if cfg.kind == "control" or not training:
        prepared = PreparedData(tokenizer, report, None, None, 0, "control: evaluation only" if cfg.kind == "control"
                                else "evaluation only", pad_id, examples)
        prepared._cfg = cfg
        return prepared
    seqs, tok_report = tokenize_split(tokenizer, examples["train"], d.format, d.max_length, d.stride)
    plan = BatchPlan(seqs, batch_size=t.batch_size, max_length=d.max_length, packing=d.packing, pad_id=pad_id, seed=t.seed)
    if t.max_steps is not None:
        total = cfg.total_steps if cfg.total_steps is not None else t.max_steps
        source = "declared (training.max_steps)"
    else:
        # An epoch is a pass over the rows this data really makes (packed rows with packing): counted here,
        # whatever compile estimated when the data was not on its machine.
        total, source = plan.steps_for_epochs(t.epochs, t.grad_accum), plan.steps_source(t.epochs, t.grad_accum)
        if cfg.total_steps is not None and cfg.total_steps != total:
            source += f"; the compiled config said {cfg.total_steps} ({cfg.raw.get('training', {}).get('total_steps_source', '?')})"
    prepared = PreparedData(tokenizer, report, plan, tok_report, total, source, pad_id, examples)
    prepared._cfg = cfg
    return prepared
