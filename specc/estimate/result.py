"""What an estimate starts from (RunFacts: what the run will do) and what it gives (Estimate: what it
will cost, with the source of every number)."""
from __future__ import annotations

from dataclasses import dataclass, field

from specc.fmt import significant


@dataclass(frozen=True)
class RunFacts:
    """What the run will do, independent of the hardware."""
    steps: int | None
    steps_source: str
    tokens: float | None                # non-padding tokens fed (throughput counts these)
    tokens_source: str
    tokens_per_step: float | None
    valid: bool                         # has a validation split: evaluations happen
    eval_batches: int | None            # batches per evaluation
    data_tokens: float | None = None    # train tokens per epoch (setup time scales with it)
    exact: bool = False                 # from the real tokenizer (specc plan), not from the spec


@dataclass(frozen=True)
class Estimate:
    run: str
    source: str                         # calibration | prior | declared | none
    source_text: str
    steps: int | None = None
    tokens: float | None = None
    tokens_source: str = ""
    tokens_per_s: float | None = None
    train_s: float | None = None        # tokens / throughput
    overhead_s: float = 0.0             # evaluations, checkpoints, exports, warm-up, per-step bookkeeping
    setup_s: float = 0.0                # before the first step: imports, model load, tokenization
    correction: float | None = None     # median past time_accuracy applied (estimated / actual)
    peak_mem_gb: float | None = None
    mem_source: str = ""
    fixed_mem_gb: float | None = None   # the part of the peak a batch does not grow (weights, state, runtime)
    step_s: float | None = None         # measured seconds per optimizer step
    checkpoint_s: float | None = None   # measured seconds per checkpoint
    parts: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    shape_key: str = ""
    device_key: str = ""
    calibrated_at: str = ""             # the calibration entry's measured.at (a newer calibration supersedes it)

    @property
    def wall_s(self) -> float | None:
        """What summary.json's wall_s will read."""
        if self.train_s is None:
            return None
        raw = self.train_s + self.overhead_s
        return raw / self.correction if self.correction else raw

    @property
    def total_s(self) -> float | None:
        """The whole job: startup + wall."""
        w = self.wall_s
        return None if w is None else w + self.setup_s

    @property
    def measured(self) -> bool:
        return self.source in ("calibration", "prior")

    def to_config(self) -> dict:
        """The `estimate` block of config.json (summary.json copies it; `specc report` compares)."""
        d = {"source": self.source, "source_text": self.source_text, "device_key": self.device_key,
             "shape_key": self.shape_key}
        if self.source == "none":
            return d
        d.update({
            "steps": self.steps, "tokens": significant(self.tokens), "tokens_source": self.tokens_source,
            "tokens_per_s": significant(self.tokens_per_s), "train_s": significant(self.train_s),
            "overhead_s": significant(self.overhead_s), "setup_s": significant(self.setup_s),
            "wall_s": significant(self.wall_s), "total_s": significant(self.total_s),
            "raw_wall_s": significant(self.train_s + self.overhead_s) if self.train_s is not None else None,
            "correction": significant(self.correction), "peak_mem_gb": significant(self.peak_mem_gb),
            "mem_source": self.mem_source,
        })
        if self.calibrated_at:
            d["calibrated_at"] = self.calibrated_at
        return d
