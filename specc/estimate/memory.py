"""Peak GPU memory of a run shape before it runs: a formula from the architecture, calibrated by `specc calibrate`.

The parts, for the torch backend (transformers + peft, LoRA weights in float32, AdamW):

* base weights: decoder linears at the quantization's bytes per weight (NF4 with double quantization:
  4 bits + an 8-bit scale per 64 + a float32 scale per 256 blocks ≈ 0.516 bytes), everything else
  (embeddings, an untied head, norms) in the compute dtype;
* LoRA: weights, gradients and AdamW's two moments, 16 bytes per adapter parameter;
* activations saved for backward, per token and per layer (``layer_bytes``): the float32 RMSNorm inputs,
  the rotated q/k, v, the attention output and its log-sum-exp, the MLP's gate, SiLU and up outputs, and
  what each LoRA module keeps (in bf16, autocast's copy of its input, one per module; in float32 the input
  itself, shared by the modules reading it; with dropout, the dropped input and its mask); Gradient checkpointing keeps only each layer's input,
  and one layer is recomputed at a time. Counted against torch's saved-tensor hooks on real layers of
  several shapes: tests/lifecycle/test_memory_model.py;
* the loss: one chunk of logits (``model.loss_chunk`` targets × vocabulary: the head's output, its
  float32 copy and the gradient cast back), and the gathered hidden states and their gradient;
* the dense attention mask when attention is dense; evaluation (no gradients: one layer's transients
  and the loss chunk), which replaces the training peak when it is larger;
* the CUDA context and the caching allocator's slack (reserved − allocated), which torch's counters do
  not show but the GPU does: declared figures unless a calibration measured them (NVML).

Sources: ``formula`` (the architecture from the model's config.json, constants above); ``calibrated``
(a `specc calibrate` entry of the same model, quantization and dtype on this device key measured the
peak: the formula's activations are scaled to match it, and its context and slack replace the declared
ones); the exact shape's measured peak when it was calibrated itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MB = 1024 ** 2
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)      # per quantized weight
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
CONTEXT_MB = 500.0        # CUDA context + cuBLAS workspace of one process (declared; NVML measures it)
SLACK = 0.10              # the caching allocator's reserved − allocated, as a share of the allocated peak (declared)
LORA_STATE_BYTES = 16     # float32 weight + gradient + AdamW exp_avg + exp_avg_sq
LORA_IN = {"q_proj": "h", "k_proj": "h", "v_proj": "h", "o_proj": "q", "gate_proj": "h", "up_proj": "h", "down_proj": "i"}
LORA_OUT = {"q_proj": "q", "k_proj": "kv", "v_proj": "kv", "o_proj": "h", "gate_proj": "i", "up_proj": "i", "down_proj": "h"}
# The tensor each module's input is (modules sharing one may share its float32 copy in a float32 model).
LORA_SOURCE = {"q_proj": "norm1", "k_proj": "norm1", "v_proj": "norm1", "o_proj": "attn", "gate_proj": "norm2",
               "up_proj": "norm2", "down_proj": "mlp"}


@dataclass(frozen=True)
class Arch:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict) -> Arch | None:
        """From a model's config.json (Llama-style keys); None when a key is missing."""
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            return cls(hidden, int(cfg["num_hidden_layers"]), heads, int(cfg.get("num_key_value_heads") or heads),
                       int(cfg.get("head_dim") or hidden // heads), int(cfg["intermediate_size"]), int(cfg["vocab_size"]),
                       bool(cfg.get("tie_word_embeddings", False)))
        except (KeyError, TypeError, ValueError):
            return None

    def dims(self) -> dict[str, int]:
        return {"h": self.hidden, "q": self.heads * self.head_dim, "kv": self.kv_heads * self.head_dim,
                "i": self.intermediate}

    @property
    def linear_params(self) -> int:
        d = self.dims()
        return self.layers * (d["h"] * d["q"] + 2 * d["h"] * d["kv"] + d["q"] * d["h"] + 3 * d["h"] * d["i"])

    @property
    def other_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params


@dataclass(frozen=True)
class Shape:
    """What decides memory, read from a resolved config (config.json) for a GPU run."""
    quantization: str
    dtype: str                  # the compute dtype: auto is bfloat16 on a GPU
    gradient_checkpointing: bool
    attention: str              # the mode that will run: sdpa_varlen, flex or dense
    loss_chunk: int
    rank: int
    targets: tuple[str, ...]
    lora_layers: int | None
    dropout: float
    batch_size: int
    max_length: int

    @classmethod
    def of(cls, config: dict, batch_size: int | None = None) -> Shape:
        m, t, d = config["model"], config["training"], config["data"]
        dtype = m.get("dtype", "auto")
        dtype = "bfloat16" if dtype == "auto" else dtype
        attention = m.get("attention", "auto")
        if attention == "auto":   # backends/torch_packed.py: the flash varlen kernel in bf16/fp16 on CUDA
            attention = "sdpa_varlen" if dtype in ("bfloat16", "float16") else "dense"
        lora = m.get("lora") or {}
        return cls(m.get("quantization", "none"), dtype, bool(m.get("gradient_checkpointing")), attention,
                   int(m.get("loss_chunk", 4096)), int(lora.get("rank", 0) or 0), tuple(lora.get("target_modules") or ()),
                   lora.get("layers"), float(lora.get("dropout", 0.0) or 0.0),
                   int(batch_size or t["batch_size"]), int(d["max_length"]))


@dataclass
class MemoryEstimate:
    batch_size: int
    parts: dict[str, float]            # MB, in the order shown
    train_peak_mb: float               # what torch.cuda.max_memory_allocated will read
    eval_peak_mb: float
    device_mb: float                   # on the GPU: the larger peak + allocator slack + CUDA context
    source: str                        # formula | calibrated | calibration (this very shape)
    source_text: str
    notes: list[str] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        return max(self.train_peak_mb, self.eval_peak_mb)


def lora_params(arch: Arch, s: Shape) -> int:
    d = arch.dims()
    per_layer = sum(s.rank * (d[LORA_IN[m]] + d[LORA_OUT[m]]) for m in s.targets)
    return per_layer * (s.lora_layers or arch.layers)


def layer_bytes(arch: Arch, s: Shape, device: str = "cuda") -> float:
    """Bytes saved for backward per token by one decoder layer that gradients flow through. Dropout keeps a
    1-byte mask on CUDA (fused kernel) and a float32 noise tensor on the CPU."""
    d, b = arch.dims(), DTYPE_BYTES[s.dtype]
    base = (8 * d["h"] + 8                        # two RMSNorms: float32 input, rsqrt
            + b * (2 * d["q"] + 2 * d["kv"])      # rotated q and k, v, the attention output
            + 4 * arch.heads                      # its log-sum-exp
            + 3 * b * d["i"])                     # gate, SiLU(gate), up
    lora, shared = 0.0, set()
    for m in s.targets:
        width = d[LORA_IN[m]]
        mask = (1 if device == "cuda" else 4) * width if s.dropout > 0 else 0
        if b != 4:
            lora += mask + b * width              # autocast's bf16 copy of the input, one per module
        elif s.dropout > 0:
            lora += mask + 4 * width              # the dropped input, one per module
        elif LORA_SOURCE[m] not in shared:        # float32: the input itself, shared by its modules
            shared.add(LORA_SOURCE[m])
            lora += 4 * width
        lora += b * s.rank                        # x @ A (autocast: in the compute dtype)
    return base + lora


def lora_cast_bytes(arch: Arch, s: Shape) -> float:
    """Per layer, whatever the tokens: autocast's compute-dtype copies of the LoRA weights (bf16 models only)."""
    b = DTYPE_BYTES[s.dtype]
    return 0.0 if b == 4 else b * lora_params(arch, s) / (s.lora_layers or arch.layers)


def weights_mb(arch: Arch, s: Shape) -> float:
    b = DTYPE_BYTES[s.dtype]
    linear = arch.linear_params * (NF4_BYTES if s.quantization == "nf4" else b)
    return (linear + arch.other_params * b) / MB


def estimate_memory(config: dict, arch: Arch, batch_size: int | None = None, calibration: dict | None = None,
                    calibrated_shape: bool = False) -> MemoryEstimate:
    """The peak of one run shape at `batch_size` (default: the config's). `calibration`: what `specc calibrate`
    measured on a GPU for this shape at some batch size ({"peak_mb", "batch_size", "reserved_mb", "context_mb"});
    `calibrated_shape`: at this very batch size."""
    s = Shape.of(config, batch_size)
    b = DTYPE_BYTES[s.dtype]
    tokens = s.batch_size * s.max_length                   # packed rows are full: the largest micro-batch
    grad_layers = min(s.lora_layers or arch.layers, arch.layers)
    layer = layer_bytes(arch, s)
    if s.gradient_checkpointing:
        saved = tokens * (grad_layers * b * arch.hidden + layer)        # layer inputs + one layer recomputed
    else:
        saved = tokens * grad_layers * layer
    saved += tokens * 4 * arch.hidden + grad_layers * lora_cast_bytes(arch, s)   # final norm input; LoRA weight casts
    chunk = min(s.loss_chunk, tokens)
    loss = chunk * arch.vocab * (2 * b + 4) + 3 * tokens * arch.hidden * b
    backward = tokens * (2 * arch.intermediate * b + 4 * arch.hidden)   # activation gradients of one layer
    mask = s.batch_size * s.max_length ** 2 * b if s.attention == "dense" else 0.0
    n_lora = lora_params(arch, s)
    parts = {"base weights": weights_mb(arch, s), "LoRA weights, gradients, AdamW state": n_lora * LORA_STATE_BYTES / MB,
             "activations saved for backward": saved / MB, "loss chunk (logits) or backward transients":
             max(loss, backward) / MB}
    if mask:
        parts["dense attention mask"] = mask / MB
    notes = []
    scale, context, slack, source = 1.0, CONTEXT_MB, SLACK, "formula"
    text = ("architecture from the model's config.json, activations per token and layer, "
            f"context {CONTEXT_MB:g} MB and allocator slack {SLACK:.0%} declared")
    if calibration and calibration.get("peak_mb") and calibration.get("batch_size"):
        ref = estimate_memory(config, arch, int(calibration["batch_size"]))     # the formula where it was measured
        measured = float(calibration["peak_mb"])
        fixed = ref.parts["base weights"] + ref.parts["LoRA weights, gradients, AdamW state"]
        if ref.peak_mb > fixed and measured > fixed:
            scale = (measured - fixed) / (ref.peak_mb - fixed)
        if calibration.get("context_mb"):
            context = float(calibration["context_mb"])
        if calibration.get("reserved_mb"):
            slack = max(0.0, float(calibration["reserved_mb"]) / measured - 1.0)
        source = "calibration" if calibrated_shape else "calibrated"
        text = (f"the formula's activations and loss × {scale:.3f} to match the peak `specc calibrate` "
                f"measured ({measured:,.0f} MB at batch {calibration['batch_size']})"
                + (f", context {context:,.0f} MB" if calibration.get("context_mb") else f", context {context:g} MB declared")
                + (f", allocator slack {slack:.1%} measured" if calibration.get("reserved_mb") else
                   f", allocator slack {slack:.0%} declared"))
    for k in ("activations saved for backward", "loss chunk (logits) or backward transients", "dense attention mask"):
        if k in parts:
            parts[k] *= scale
    train = sum(parts.values())
    evaluation = (parts["base weights"] + n_lora * 12 / MB
                  + scale * (chunk * arch.vocab * (b + 4) + tokens * (3 * arch.intermediate * b + 8 * arch.hidden)
                             + mask) / MB)
    if evaluation > train:
        notes.append(f"evaluation is the peak: {evaluation:,.0f} MB (its loss chunk and one layer's transients) over "
                     f"training's {train:,.0f} MB")
    peak = max(train, evaluation)
    parts["allocator slack"] = peak * slack
    parts["CUDA context"] = context
    return MemoryEstimate(s.batch_size, parts, train, evaluation, peak * (1 + slack) + context, source, text, notes)


def largest_batch(config: dict, arch: Arch, gpu_memory_gb: float, headroom: float, calibration: dict | None = None,
                  most: int = 4096) -> tuple[int | None, MemoryEstimate]:
    """The largest micro-batch whose device memory stays under headroom × the GPU (None: not even 1), and its
    estimate (at that batch, else at 1)."""
    budget = headroom * gpu_memory_gb * 1024
    best, best_est = None, None
    lo, hi = 1, most
    first = estimate_memory(config, arch, 1, calibration)
    if first.device_mb > budget:
        return None, first
    while lo <= hi:                       # device memory grows with the batch: bisect
        mid = (lo + hi) // 2
        est = estimate_memory(config, arch, mid, calibration)
        if est.device_mb <= budget:
            best, best_est, lo = mid, est, mid + 1
        else:
            hi = mid - 1
    return best, best_est


def memory_calibration(calibration, shape) -> tuple[dict | None, bool]:
    """(the memory block a GPU calibration measured for this run shape at some batch size, whether at this
    very batch size), from a CalibrationFile; (None, False) when none was measured on CUDA."""
    if calibration is None:
        return None, False
    want = {k: v for k, v in shape.to_dict().items() if k not in ("batch_size", "grad_accum")}
    found = None
    for entry in calibration.entries.values():
        s, mem = entry.get("shape") or {}, entry.get("memory") or {}
        on_cuda = str((entry.get("measured") or {}).get("device") or "").startswith("cuda")
        if not (on_cuda and mem.get("peak_mb") and mem.get("batch_size")):
            continue
        if all(s.get(k, "" if k == "kernels" else None) == v for k, v in want.items()):
            if int(mem["batch_size"]) == shape.batch_size:
                return mem, True
            found = mem
    return found, False
