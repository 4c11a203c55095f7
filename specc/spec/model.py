"""The experiment spec, modelled in pydantic v2: strict about keys, explicit about defaults.

Every section forbids unknown keys. Fields left out of a spec get the defaults shown here, and
`specc compile` writes them out in full, so a reviewer sees what will run; the one exception is the
model's kernel choices (KERNEL_DEFAULTS: attention, compile, liger, loss_chunk), written only when a
spec sets them away from their defaults (the run records what `auto` chose). Fields that a profile
may set (batch_size, grad_accum, max_length) default to None here and are resolved by the planner,
which records who won (spec, profile or fallback).
"""
from __future__ import annotations

import re
from typing import Literal, Union

from pydantic import Field, field_validator, model_validator

from specc.spec.evaluation import Evaluation
from specc.spec.fields import (MEM, SLUG, Name, SlurmTime, Strict, format_time,  # noqa: F401  (re-exported)
                               parse_time)
from specc.spec.jobenv import JobSettings
from specc.spec.tracking import Tracking

Comparator = Literal["<", "<=", ">", ">=", "==", "within"]


class Expected(Strict):
    metric: str = Field(description="a summary.json metric (best_val_loss, final_loss, val_loss, tokens_per_s, wall_hours, "
                                    "peak_mem_gb, ...: specc/spec/metrics.py) or eval.<task>.<metric>")
    comparator: Comparator
    target: float
    tolerance: float = Field(0.0, ge=0, description="absolute slack; for 'within' a relative band is target*tolerance when relative=true")
    relative: bool = Field(False, description="tolerance is a fraction of the target (0.05 = ±5%)")
    vs_baseline: bool = Field(False, description="target is relative to the baseline's value of the metric (ratio)")
    vs_control: bool = Field(False, description="target is the difference from the control run's value (same base "
                                                "model, no training): e.g. exact match gained by the adapter")

    @model_validator(mode="after")
    def _one_reference(self):
        if self.vs_baseline and self.vs_control:
            raise ValueError("compare against the baseline or the control run, not both")
        return self

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", v):
            raise ValueError(f"metric {v!r} must be an identifier such as val_loss")
        from specc.spec.metrics import unknown_metric

        problem = unknown_metric(v)
        if problem:
            raise ValueError(problem)
        return v


class Hypothesis(Strict):
    statement: str = Field(min_length=1)
    changes: list[str] = Field(default_factory=list, description="what differs from the baseline, in words")
    expected: list[Expected] = Field(default_factory=list)
    falsified_if: str | None = None


TargetModule = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Lora(Strict):
    rank: int = Field(8, ge=1, le=4096)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[TargetModule] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    layers: int | None = Field(None, ge=1, description="train adapters on the last N blocks; null = all")


class Model(Strict):
    path: str = Field(min_length=1, description="local HF-format directory, or builtin:tiny-llama")
    size: str = Field("unknown", description="a label used in run names, e.g. 1B")
    quantization: Literal["nf4", "none"] = "nf4"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False
    lora: Lora | None = Field(default_factory=Lora, description="null only in a control run's compiled config (the "
                                                                 "base model alone)")
    # How the step runs (speed and memory, never the numbers it computes beyond float rounding). compile
    # writes these into config.json only when they differ from the defaults (KERNEL_DEFAULTS).
    attention: Literal["auto", "flex", "sdpa_varlen", "dense"] = Field(
        "auto", description="packed attention: sdpa_varlen (padding-free rows, per-document attention: flash varlen on "
                            "CUDA), flex (FlexAttention block mask; CUDA for training), dense ([B,1,T,T] mask); auto = "
                            "sdpa_varlen on CUDA in bf16/fp16 and on the CPU (dense for batches of short documents), "
                            "dense otherwise")
    compile: bool = Field(False, description="torch.compile each decoder layer (torch backend)")
    liger: bool = Field(False, description="Liger kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy); CUDA, "
                                           "needs the cuda extra")
    loss_chunk: int = Field(4096, ge=16, le=1_048_576, description="target tokens per chunk of float32 logits in the loss")


KERNEL_DEFAULTS = {"attention": "auto", "compile": False, "liger": False, "loss_chunk": 4096}


def model_section(model: Model) -> dict:
    """The model section as compiled output shows it: the kernel choices only when set away from their defaults."""
    out = model.model_dump(mode="json")
    for key, default in KERNEL_DEFAULTS.items():
        if out.get(key) == default:
            del out[key]
    return out


class Data(Strict):
    train: str = Field(min_length=1, description="JSONL path (relative to the spec) or builtin:<name>")
    valid: str | None = None
    test: str | None = None
    format: Literal["text", "prompt_completion", "chat"] = "text"
    max_length: int | None = Field(None, ge=8, le=1_048_576, description="set by the profile unless given")
    stride: int | None = Field(None, ge=1, description="window step for long documents; null = truncate")
    packing: bool = True
    samples: int | None = Field(None, ge=1, description="declared train sample count, for planning when the file is not here")
    avg_tokens: float | None = Field(None, gt=0, description="declared mean tokens per sample, for planning")


class Schedule(Strict):
    kind: Literal["constant", "linear", "cosine", "wsd"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd only: share of the post-warmup steps spent decaying")


class EarlyStopping(Strict):
    enabled: bool = True
    patience: int = Field(5, ge=1, description="evaluations without improvement of the train-loss average")
    min_delta: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0, description="no plateau/spike stop before this step")
    check_every: int = Field(25, ge=1, description="steps between plateau checks (50-step loss average)")
    grad_spike_threshold: float = Field(1000.0, gt=0)
    grad_spike_patience: int = Field(3, ge=1)


class Training(Strict):
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1, description="set by the profile unless given")
    grad_accum: int | None = Field(None, ge=1, description="set by the profile unless given")
    lr: float = Field(2e-4, gt=0, le=1)
    schedule: Schedule = Field(default_factory=Schedule)
    grad_clip: float | None = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0, lt=2**32)
    eval_every: int = Field(250, ge=1)
    eval_examples: int | None = Field(500, ge=1, description="validation (and control) examples per evaluation: a "
                                      "fixed sample, the same for every batch size and run; null = the whole split")
    checkpoint_every: int = Field(250, ge=1)
    keep_last: int = Field(2, ge=1)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "eval_batches" in data:
            raise ValueError("training.eval_batches was replaced by eval_examples: a fixed number of validation "
                             "examples, the same whatever the batch size (e.g. eval_examples: 500; null = all)")
        return data

    @model_validator(mode="after")
    def _length(self):
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of training.max_steps and training.epochs")
        return self


class Choice(Strict):
    cluster: Name | None = None
    partition: Name
    qos: Name | None = None


class Resources(JobSettings):
    """Resources of a run's job; the job settings (account, mail, env, setup, ...) come from JobSettings."""
    cluster: Name = "local"
    catalog: str | None = Field(None, description="clusters catalog YAML; default: clusters.yaml beside the spec, else the built-in")
    partition: Name | None = None
    qos: Name | None = None
    choices: list[Choice] = Field(default_factory=list, description="(cluster, partition) preferences for specc submit")
    gpus: int = Field(0, ge=0, le=1024)
    gpu_type: Name | None = None
    nodes: int = Field(1, ge=1, le=1024)
    cpus: int = Field(2, ge=1, le=4096)
    mem: str = "8G"
    time: SlurmTime | None = Field(None, description="SLURM time limit, D-HH:MM:SS; or give window_hours")
    window_hours: float | None = Field(None, gt=0)
    margin_hours: float = Field(0.5, ge=0)
    max_requeues: int = Field(3, ge=0, le=100)
    signal_lead_s: int | None = Field(None, ge=10, description="seconds of warning before the time limit; null = derived")
    memory_headroom: float = Field(0.70, gt=0, le=1, description="share of a GPU's memory the planned peak may use: "
                                                                  "`specc plan` picks the largest batch under it")

    @field_validator("mem")
    @classmethod
    def _mem(cls, v):
        if not MEM.match(v):
            raise ValueError(f"mem {v!r} must look like 16G, 512M or 64000")
        return v


class TestStage(Strict):
    max_steps: int = Field(20, ge=1)
    time: SlurmTime = "00:15:00"
    partition: Name | None = None
    choices: list[Choice] = Field(default_factory=list)



class Stages(Strict):
    test: TestStage | None = None


class ResourceRule(Strict):
    """Resources for the sweep points that match: `{when: {model.size: 3B}, set: {time: "08:00:00", mem: 128G}}`."""
    when: dict[str, Union[str, int, float, bool]] = Field(min_length=1, description="dotted spec fields and the values "
                                                          "a run must have (after the sweep point is applied)")
    set: dict = Field(min_length=1, description="resources fields for those runs (over the spec's resources)")


class Sweep(Strict):
    matrix: dict[str, list[Union[dict, str, int, float, bool, None]]] = Field(min_length=1)
    name: str = Field(min_length=1, description="run-name template, e.g. {model.size}_rank{model.lora.rank}")
    control: bool = Field(False, description="add eval-only runs of each distinct base model")
    max_concurrent: int | None = Field(None, ge=1, description="job-array concurrency limit (%N), per array")
    resources: list[ResourceRule] = Field(default_factory=list, description="per-shape resources: the first rule "
                                          "whose `when` matches a run sets its resources; one job array per shape")


class Continuation(Strict):
    """Continue an earlier run (the seeds' continuation plan)."""
    from_run: str = Field(min_length=1, description="run directory or checkpoint to continue from")
    strategy: Literal["extend", "restart"] = Field(
        "extend", description="extend (A): keep step, optimizer and data position, decay from the current lr to the "
                              "minimum at the new total; restart (B): old weights, fresh schedule")
    at_step: int = Field(ge=1, description="the step the earlier run reached")
    start_lr: float | None = Field(None, gt=0, description="extend: lr at at_step (default: training.lr); the run checks it against the checkpoint")


class Spec(Strict):
    experiment: str = Field(min_length=1, max_length=128)
    hypothesis: Hypothesis
    baseline: str | None = Field(None, description="a spec path (relative to this spec) or an experiment name")
    model: Model
    data: Data
    training: Training
    profile: Literal["fast", "balanced", "quality", "memory_efficient", "custom"] = "custom"
    resources: Resources = Field(default_factory=Resources)
    stages: Stages = Field(default_factory=Stages)
    sweep: Sweep | None = None
    evaluation: Evaluation | None = Field(None, description="task scores from generation, on the adapter and on "
                                                               "control runs")
    tracking: Tracking | None = Field(None, description="experiment trackers the runs log to (MLflow, Weights & Biases)")
    backend: str = Field("auto", description="auto, torch, mlx, or a backend registered in the specc.backends "
                                             "entry-point group")
    continuation: Continuation | None = None

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, v: str) -> str:
        from backends import unknown_backend

        problem = unknown_backend(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("experiment")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v) or v in (".", ".."):
            raise ValueError(f"experiment {v!r} must be a slug: letters, digits, '.', '_', '-' (not '.' or '..')")
        return v


SECTION_MODELS = {"hypothesis": Hypothesis, "model": Model, "data": Data, "training": Training,
                  "resources": Resources, "stages": Stages, "sweep": Sweep, "evaluation": Evaluation,
                  "tracking": Tracking}
