"""The contract between the engine (specc/engine) and a training backend.

The engine owns the loop, the data and every policy; a backend owns only the model: load it, run
forward/backward on batches the engine built, apply one optimizer update, and move its trainable
state to and from host arrays. Both backends implement exactly this, so the same spec gives the
same data, schedule and checkpoint semantics everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Module names as in HF Llama ("q_proj", "v_proj", ...). Both backends map them to their own layers.
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    # Apply LoRA to the last `layers` transformer blocks; None means all of them.
    layers: int | None = None


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW, identical in both backends (decoupled weight decay, bias-corrected moments)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max global L2 norm over trainable params; None disables clipping


@dataclass(frozen=True)
class ModelSettings:
    path: Path                      # a local HF-format directory (config.json, *.safetensors, tokenizer)
    quantization: str = "none"      # "nf4" (4-bit QLoRA) or "none"
    dtype: str = "auto"             # "auto" = bf16 on CUDA, float32 on CPU; or "float32" / "bfloat16"
    gradient_checkpointing: bool = False
    device: str = "auto"            # torch: "auto" | "cpu" | "cuda"; mlx: "auto" | "cpu" | "gpu"
    # How the step runs; a backend records what it chose in describe(). Float rounding aside, none changes a number.
    attention: str = "auto"         # "auto" | "sdpa_varlen" | "flex" | "dense" (packed rows; see backends/torch_packed.py)
    compile: bool = False           # torch.compile the decoder layers
    liger: bool = False             # Liger kernels (CUDA)
    loss_chunk: int = 4096          # target tokens per chunk of float32 logits


@dataclass(frozen=True)
class Batch:
    """One micro-batch, built by the engine (never by a backend). Shapes are [B, T].

    - input_ids:   token ids; padding positions hold the pad id and have segment_ids == 0.
    - loss_mask:   1.0 where token t is a *target* (predicted from position t-1), else 0.0.
                   loss_mask[:, 0] is always 0. Padding and (for prompt_completion) prompts are 0.
    - segment_ids: 1..k for the k documents packed into a row, 0 for padding. Attention is causal and
                   block-diagonal: a token attends only to earlier tokens of the same segment.
    - position_ids: position within its own segment (restarts at 0 for every packed document).
    """
    input_ids: np.ndarray
    loss_mask: np.ndarray
    segment_ids: np.ndarray
    position_ids: np.ndarray

    @property
    def n_target_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def n_tokens(self) -> int:
        """Non-padding tokens (what throughput counts)."""
        return int((self.segment_ids > 0).sum())


@dataclass(frozen=True)
class StepResult:
    grad_norm: float                # global L2 norm before clipping
    applied: bool                   # False when the update was skipped (non-finite gradients)


@dataclass(frozen=True)
class GenerationSettings:
    """How `Backend.generate` decodes. Greedy unless temperature > 0; a sampled run is a function of `seed`."""
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    eos_ids: tuple[int, ...] = ()           # any of these ends a row
    pad_id: int = 0
    stop_ids: tuple[tuple[int, ...], ...] = ()   # token sequences of the stop strings: stop early (best effort;
                                                 # the engine cuts the decoded text at the stop string exactly)


@dataclass(frozen=True)
class MemoryStats:
    current_mb: float
    peak_mb: float
    source: str                     # where the figure came from, e.g. "torch.cuda.max_memory_allocated", "mlx.get_peak_memory", "rss"
    gauges: dict[str, float] = field(default_factory=dict)   # device health for the step's metrics line, e.g. gpu_util


@runtime_checkable
class Backend(Protocol):
    name: str

    def setup(self, model: ModelSettings, lora: LoraSettings, optim: OptimizerSettings, seed: int) -> None:
        """Load the base model from a local directory, quantize if asked, add LoRA; only adapters train.

        Raises specc.errors.UserError (with what was found) for a missing or broken model directory.
        """

    def forward_backward(self, batch: Batch, scale: float) -> tuple[float, int]:
        """Accumulate gradients of `scale * sum(token cross-entropy over loss_mask)`.

        Returns (loss_sum, n_target_tokens) for this micro-batch, loss_sum unscaled, as a Python float.
        The engine passes scale = 1 / (target tokens in the whole optimizer step), so accumulation
        over micro-batches equals one big batch exactly.
        """

    def optimizer_step(self, lr: float) -> StepResult:
        """Clip (OptimizerSettings.grad_clip), then one AdamW update at `lr`, then zero the gradients.

        If the gradient norm is not finite, skip the update (weights and optimizer state unchanged),
        zero the gradients and return applied=False.
        """

    def zero_grad(self) -> None:
        """Drop accumulated gradients without updating (used when the engine rejects a step)."""

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        """(loss_sum, n_target_tokens) with dropout off and no gradient."""

    def state(self) -> dict[str, np.ndarray]:
        """Everything trainable and stateful, materialised on the host as numpy arrays:
        adapter weights ("adapter/<name>"), optimizer state ("optim/<name>/..."), RNG ("rng/...").
        Bit-exact: load_state(state()) must not change a single bit of later training."""

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore exactly what state() returned."""

    def load_adapter_weights(self, state: dict[str, np.ndarray]) -> None:
        """Load only the "adapter/..." entries (used by --init-from: old weights, fresh optimizer)."""

    def export_adapter(self, path: Path) -> None:
        """Write an adapter the ecosystem loads: PEFT format (torch) or mlx-lm format (mlx)."""

    def generate(self, prompts: list[list[int]], settings: GenerationSettings) -> list[list[int]]:
        """The new token ids for each prompt (without the prompt and without the eos that ended it), with the
        adapter applied (none after setup(lora=None)); batched, with a KV cache. Training state (weights, optimizer,
        RNG, train/eval mode) is left exactly as it was."""

    def memory(self) -> MemoryStats:
        ...

    def describe(self) -> dict[str, object]:
        """Facts for the run log and plan: device, dtype, quantization details, param counts."""


@runtime_checkable
class Portable(Protocol):
    """What makes a backend's checkpoints travel (optional; both builtin backends have it).

    A checkpoint holds the canonical layout of backends/layout.py, not a backend's own names, so a run
    resumes on another backend and `--init-from` / `specc export` read any adapter. Without these
    methods a backend's checkpoints keep its own layout and resume only on the same backend.
    """

    def to_canonical(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`state()` in the canonical layout: adapter weights and AdamW moments under Hugging Face module
        names in PEFT's orientation, "optim/step", and this backend's own "rng/..." entries. Exact (a
        rename and, at most, a transpose), so a same-backend resume stays bit-exact."""

    def from_canonical(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical arrays back into what `load_state` (or, adapter entries only, `load_adapter_weights`)
        takes. RNG entries of another backend are dropped (RNG state cannot travel): where load_state needs
        one, this backend's current RNG state stands in."""


@runtime_checkable
class Mergeable(Protocol):
    def export_merged(self, path: Path) -> dict[str, object]:
        """Write the base model with the current adapter merged in, as a Hugging Face model directory
        (config.json, *.safetensors, the tokenizer files) that transformers and mlx-lm load. A quantized
        base is dequantized first, so the weights are the ones training saw. Returns facts for the log
        (dtype, dequantized: what from). The backend's model is spent afterwards."""


@dataclass
class BackendInfo:
    """What the registry knows about a backend without importing it."""
    name: str
    target: str                     # "module:Class"
    extra: str                      # pip extra that provides its packages, e.g. "torch"
    modules: tuple[str, ...] = field(default_factory=tuple)  # top-level modules it needs
    dist: str | None = None         # a plugin: the distribution whose entry point registered it
