"""Apple MLX backend (mlx + mlx-lm): LoRA and QLoRA on Apple silicon, and on Linux through `mlx[cpu]`.

What it does, and the MLX facts behind it:

- Loading: `mlx_lm.utils.load_model` on a local HF-format directory (config.json + model*.safetensors);
  nothing is downloaded. transformers>=5 writes RoPE settings as `rope_parameters`, which mlx-lm's
  llama/qwen2/qwen3 loaders (0.32) do not read (they would silently fall back to theta=10000); we translate it
  to `rope_theta`/`rope_scaling` before building the model.
- Quantization "nf4" means QLoRA, but MLX has no NF4: the frozen base is quantized with MLX's *affine*
  4-bit format (bits=4, group_size=64: a float scale and bias per group of 64 weights) through
  `mlx_lm.utils.quantize_model`, i.e. exactly what `mlx_lm.convert -q --q-bits 4 --q-group-size 64`
  produces (every Linear and Embedding whose input dim divides by 64, lm_head/embeddings included,
  unlike bitsandbytes which keeps those unquantized). An exported adapter therefore reproduces the
  training model on such a converted base; on the full-precision base it is the usual QLoRA transfer.
  Losses are close to, but not the same as, the torch NF4 backend's.
- LoRA: `mlx_lm.tuner.utils.linear_to_lora_layers`. mlx-lm's LoRA computes
  `y = W x + scale * (dropout(x) @ lora_a) @ lora_b`, so scale = alpha / rank gives PEFT's scaling.
  lora_a is [in, r] (uniform +-1/sqrt(in), like PEFT's kaiming init of A), lora_b is [r, out] (zeros);
  PEFT stores the transposes (lora_A.weight [r, in], lora_B.weight [out, r]).
- Attention: mlx-lm models build a plain causal mask internally. We run the model's own pieces
  (embed_tokens, each block with *our* mask, norm, lm_head / tied embeddings) with a boolean
  [B, 1, T, T] mask = causal AND same-segment, so packed documents never see each other and no real
  token attends to padding (padding rows attend only to padding, which keeps them finite).
  Positions: mlx-lm applies RoPE with a per-row offset only (mx.fast.rope takes a scalar or per-batch
  offset, not per-token positions), so tokens keep their position in the packed row. RoPE is
  relative -- q.k depends only on the distance between two tokens -- so with the block-diagonal mask a
  document's logits equal those of the same document alone (checked to ~1e-5 in the tests).
  RoPE variants whose frequencies depend on absolute length (longrope/su) are the exception.
- Training step: `nn.value_and_grad` over the trainable (LoRA) parameters, gradients accumulated
  across micro-batches here (tree_map add); the update is `mlx.optimizers.AdamW(bias_correction=True)`,
  which applies `p *= 1 - lr*wd` before the bias-corrected Adam step -- torch's decoupled AdamW.
  On the GPU the forward/backward and the update are `mx.compile`d; on the CPU they are not, because
  MLX's CPU compile JIT-builds C++ kernels (~25 s per new batch shape here) and was slower per step
  for small models. SPECC_MLX_COMPILE=1/0 forces it either way.
- Throughput (uncompiled path): masked attention costs T x T per row however the segments fall, so
  each batch is re-laid out first (`relayout`): padding rows/columns dropped and, when the modelled
  cost drops by >10%, the documents re-packed first-fit-decreasing into shorter rows. That is exact
  (block-diagonal attention + relative RoPE) and deterministic. Only target positions go through the
  LM head. On Linux, note that the mlx[cpu] wheel links the reference (netlib) BLAS: its sgemm runs
  ~10x slower than numpy's OpenBLAS on the same machine, and mlx-lm pays the same price.
- Checkpoints: MLX is lazy, so everything is `mx.eval`ed before it is converted to numpy; only arrays
  are saved. bfloat16 values are widened to float32 (exact) and narrowed back on load (exact).
- Export: `adapters.safetensors` + `adapter_config.json`, exactly what `mlx_lm lora` writes, so
  `mlx_lm.load(base, adapter_path=...)`, `mlx_lm generate --adapter-path` and `mlx_lm fuse` work.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from backends.protocol import (
    Batch,
    LoraSettings,
    MemoryStats,
    ModelSettings,
    OptimizerSettings,
    StepResult,
)
from specc.errors import UserError
from specc.model_check import check_model_dir as shared_check, listing as _listing

QUANT_BITS = 4
QUANT_GROUP_SIZE = 64
QUANT_MODE = "affine"

# mlx-lm model types whose modules have the structure we drive directly:
# model.model.{embed_tokens, layers[i](h, mask, cache), norm} and lm_head or tied embeddings.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# HF module names -> path inside an mlx-lm transformer block.
HF_TO_MLX_KEYS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


def check_model_dir(path: Path) -> None:
    """Raise UserError naming what is there when `path` is not a usable HF-format model directory."""
    # mlx-lm reads safetensors only.
    shared_check(path, weights=("model*.safetensors",), need_tokenizer=False)


def _rope_overrides(path: Path) -> dict:
    """transformers>=5 writes `rope_parameters`; mlx-lm's llama-family loaders read `rope_theta`/`rope_scaling`."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path / 'config.json'}: {exc}", where="model.path") from exc
    params = config.get("rope_parameters")
    out: dict = {}
    if isinstance(params, dict):
        if "rope_theta" not in config and "rope_theta" in params:
            out["rope_theta"] = params["rope_theta"]
        rope_type = params.get("rope_type", params.get("type", "default"))
        if config.get("rope_scaling") is None and rope_type not in (None, "default"):
            out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return out


def _to_numpy(arr) -> np.ndarray:
    """Evaluated mlx array -> numpy, bit-exact. bfloat16 (no numpy dtype) is widened to float32, exactly."""
    import mlx.core as mx

    if not isinstance(arr, mx.array):
        raise TypeError(f"state entry is a {type(arr).__name__}, not an mlx array")
    if arr.dtype == mx.bfloat16:
        arr = arr.astype(mx.float32)
    return np.array(arr, copy=True)


class MLXBackend:
    name = "mlx"

    def __init__(self) -> None:
        self.model = None
        self.optimizer = None
        self._grads = None
        self._info: dict[str, Any] = {}
        self.relayout = True       # re-pack documents into cheaper rows (uncompiled path); see relayout()
        self.last_layout: tuple[int, ...] | None = None
        # None = decide in setup(): compile on the GPU (Metal), not on the CPU, where mx.compile JIT-builds
        # C++ kernels with the system compiler (tens of seconds per new shape) and the step got slower.
        env = os.environ.get("SPECC_MLX_COMPILE", "").strip().lower()
        self.compile: bool | None = None if env in ("", "auto") else env not in ("0", "false", "no", "off")

    # ------------------------------------------------------------------ setup
    def setup(self, model: ModelSettings, lora: LoraSettings | None, optim: OptimizerSettings, seed: int) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optimizers
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import get_total_parameters, load_model, quantize_model

        path = Path(model.path).expanduser()
        check_model_dir(path)

        # Device
        if model.device == "cpu":
            mx.set_default_device(mx.cpu)
        elif model.device == "gpu":
            if not mx.is_available(mx.gpu):
                raise UserError("model.device is 'gpu' but MLX has no GPU here (mlx[cpu] on Linux is CPU-only)",
                                hint="use device: auto or cpu", where="model.device")
            mx.set_default_device(mx.gpu)
        elif model.device != "auto":
            raise UserError(f"unknown MLX device {model.device!r}", hint="use auto, cpu or gpu",
                            where="model.device")
        device = mx.default_device()
        on_gpu = device.type == mx.gpu
        if self.compile is None:
            self.compile = on_gpu

        # Load
        overrides = _rope_overrides(path)
        try:
            net, config = load_model(path, lazy=False, model_config=overrides or None)
        except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"mlx-lm could not load the model in {path}: {exc}",
                            hint=f"{path} contains: {_listing(path)}", where="model.path") from exc
        model_type = config.get("model_type")
        inner = getattr(net, "model", None)
        if model_type not in SUPPORTED_MODEL_TYPES or not all(
                hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
            raise UserError(f"the MLX backend does not support model_type {model_type!r}",
                            hint=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}; or use the torch backend",
                            where="model.path")

        # Dtype
        dtypes = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
        if model.dtype == "auto":
            dtype = mx.bfloat16 if on_gpu else mx.float32
        elif model.dtype in dtypes:
            dtype = dtypes[model.dtype]
        else:
            raise UserError(f"unknown dtype {model.dtype!r}", hint="use auto, float32 or bfloat16",
                            where="model.dtype")
        net.set_dtype(dtype)

        # Quantization (QLoRA): MLX affine 4-bit, group 64, exactly as mlx_lm.convert -q.
        already_quantized = "quantization" in config
        quant: dict[str, Any] = {"requested": model.quantization}
        if model.quantization == "nf4":
            if already_quantized:
                quant.update(method="pre-quantized checkpoint", **config["quantization"])
            else:
                # mlx-lm's own QLoRA recipe (what `mlx_lm.convert -q --q-bits 4 --q-group-size 64`
                # does): every Linear/Embedding whose input dim divides by the group size, lm_head and
                # (tied) embeddings included, so an exported adapter sits on exactly that base.
                skipped = [p for p, m in net.named_modules()
                           if hasattr(m, "to_quantized") and m.weight.shape[-1] % QUANT_GROUP_SIZE]
                with contextlib.redirect_stdout(io.StringIO()):  # it prints bits-per-weight
                    net, _ = quantize_model(net, config, group_size=QUANT_GROUP_SIZE, bits=QUANT_BITS,
                                            mode=QUANT_MODE)
                n_quant = sum(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
                              for _, m in net.named_modules())
                quant.update(
                    method=f"mlx {QUANT_MODE} {QUANT_BITS}-bit (per-group scale and bias), not NF4",
                    bits=QUANT_BITS, group_size=QUANT_GROUP_SIZE, mode=QUANT_MODE,
                    quantized_modules=n_quant, skipped_modules=skipped,
                    scope="as mlx_lm.convert -q: all Linear and Embedding layers (lm_head and embeddings "
                          "included) whose input dim divides by the group size",
                    reproduce=f"mlx_lm.convert --hf-path <base> -q --q-bits {QUANT_BITS} "
                              f"--q-group-size {QUANT_GROUP_SIZE}",
                )
        elif model.quantization == "none":
            if already_quantized:
                quant.update(method="pre-quantized checkpoint", **config["quantization"])
        else:
            raise UserError(f"unknown quantization {model.quantization!r}", hint="use nf4 or none",
                            where="model.quantization")

        # LoRA (none for a control run: the base model alone, evaluated)
        n_blocks = len(inner.layers)
        net.freeze()
        num_layers, keys, self.lora_parameters = 0, [], None
        if lora is not None:
            num_layers, keys = self._lora_targets(inner, lora, model_type, n_blocks)
            self.lora_parameters = {
                "rank": int(lora.rank),
                "scale": float(lora.alpha) / float(lora.rank),
                "dropout": float(lora.dropout),
                "keys": keys,
            }
            mx.random.seed(seed)
            linear_to_lora_layers(net, num_layers, self.lora_parameters)
        net.train()
        mx.eval(net.parameters())

        self.model = net
        self.model_path = path
        self.num_layers = num_layers
        self.config = config
        self.dtype = dtype
        self.tied = bool(getattr(net.args, "tie_word_embeddings", False)) or not hasattr(net, "lm_head")
        self.sliding_window = getattr(inner, "sliding_window", None)
        self.grad_checkpoint = bool(model.gradient_checkpointing)
        self.grad_clip = optim.grad_clip
        args = net.args
        n_heads = int(args.num_attention_heads)
        n_kv = int(getattr(args, "num_key_value_heads", None) or n_heads)
        head_dim = int(getattr(args, "head_dim", None) or args.hidden_size // n_heads)
        hidden, inter = int(args.hidden_size), int(args.intermediate_size)
        self._arch = {
            "linear": hidden * head_dim * (2 * n_heads + 2 * n_kv) + 3 * hidden * inter,
            "attn_width": n_heads * head_dim,
        }

        # Optimizer, initialised now so its state exists (and has a fixed structure) before step 1.
        self.optimizer = optimizers.AdamW(
            learning_rate=0.0, betas=list(optim.betas), eps=optim.eps,
            weight_decay=optim.weight_decay, bias_correction=True,
        )
        self.optimizer.init(net.trainable_parameters())
        mx.eval(self.optimizer.state)
        self._grads = None
        self._build_steps()

        trainable = sum(v.size for _, v in tree_flatten(net.trainable_parameters()))
        self._info = {
            "backend": "mlx",
            "device": str(device),
            "mlx_version": mx.__version__,
            "mlx_lm_version": _mlx_lm_version(),
            "model_type": model_type,
            "dtype": str(dtype).replace("mlx.core.", ""),
            "quantization": quant,
            "params_total": int(get_total_parameters(net)),
            "params_trainable": int(trainable),
            "lora": None if lora is None else {
                "rank": lora.rank, "alpha": lora.alpha, "mlx_scale": self.lora_parameters["scale"],
                "dropout": lora.dropout, "keys": keys, "num_layers": num_layers, "blocks": n_blocks},
            "attention": "causal and block-diagonal over segment_ids (explicit bool mask); "
                         "RoPE positions continue across packed documents (relative, same logits)",
            "batch_layout": ("as given (compiled: fixed shapes)" if self.compile else
                             "re-laid out per batch: padding dropped, documents re-packed into shorter "
                             "rows when cheaper; LM head on target positions only"),
            "gradient_checkpointing": self.grad_checkpoint,
            "compiled": self.compile,
        }

    def _lora_targets(self, inner, lora: LoraSettings, model_type: str, n_blocks: int) -> tuple[int, list[str]]:
        """(blocks from the end that get adapters, mlx-lm module keys) for lora.layers and lora.target_modules."""
        import mlx.nn as nn

        num_layers = n_blocks if lora.layers is None else int(lora.layers)
        if not 1 <= num_layers <= n_blocks:
            raise UserError(f"lora.layers={lora.layers} but the model has {n_blocks} blocks",
                            hint=f"use 1..{n_blocks} or leave it unset for all", where="lora.layers")
        block_modules = {name for name, _ in inner.layers[-1].named_modules() if name}
        keys = []
        for target in lora.target_modules:
            key = HF_TO_MLX_KEYS.get(target, target)
            if key not in block_modules:
                matches = sorted(n for n in block_modules if n.rsplit(".", 1)[-1] == target)
                if len(matches) != 1:
                    linears = sorted(n for n, m in inner.layers[-1].named_modules()
                                     if isinstance(m, (nn.Linear, nn.QuantizedLinear)))
                    raise UserError(f"LoRA target module {target!r} not found in a {model_type} block",
                                    hint=f"available: {', '.join(linears)}", where="lora.target_modules")
                key = matches[0]
            keys.append(key)
        return num_layers, keys

    # ------------------------------------------------------------- model pass
    def _mask(self, segment_ids):
        """[B, 1, T, T] bool: causal AND same segment (padding, segment 0, only sees padding)."""
        import mlx.core as mx

        T = segment_ids.shape[1]
        idx = mx.arange(T)
        causal = idx[:, None] >= idx[None, :]
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        full = mx.logical_and(causal[None], same)
        window = None
        if self.sliding_window and any(getattr(l, "use_sliding", False) for l in self.model.model.layers):
            window = mx.logical_and(full, (idx[:, None] - idx[None, :] < self.sliding_window)[None])
            window = window[:, None]
        return full[:, None], window

    def _hidden(self, input_ids, segment_ids):
        """Final normed hidden states [B, T, D]: the model's own modules, called with our mask."""
        inner = self.model.model
        mask, window_mask = self._mask(segment_ids)
        h = inner.embed_tokens(input_ids)
        for layer in inner.layers:
            m = window_mask if (window_mask is not None and getattr(layer, "use_sliding", False)) else mask
            if self.grad_checkpoint:
                h = _checkpointed(layer, h, m)
            else:
                h = layer(h, m, cache=None)
        return inner.norm(h)

    def _head(self, h):
        if self.tied:
            return self.model.model.embed_tokens.as_linear(h)
        return self.model.lm_head(h)

    def _logits(self, input_ids, segment_ids):
        return self._head(self._hidden(input_ids, segment_ids))

    def _loss(self, input_ids, segment_ids, sel, targets, weights, scale):
        """(scale * loss_sum, loss_sum): summed float32 CE of the positions `sel` (flat b*T + t) against
        `targets` (= input_ids[b, t+1]), weighted by `weights` (= loss_mask[b, t+1])."""
        import mlx.core as mx
        import mlx.nn as nn

        h = self._hidden(input_ids, segment_ids)
        h = h.reshape(-1, h.shape[-1])[sel]
        logits = self._head(h).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, targets, reduction="none")
        loss_sum = mx.where(weights != 0, ce * weights, 0.0).sum()
        return loss_sum * scale, loss_sum

    def _build_steps(self) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optimizers

        model, optimizer = self.model, self.optimizer

        value_and_grad = nn.value_and_grad(model, self._loss)

        def fb(input_ids, segment_ids, sel, targets, weights, scale):
            (_, loss_sum), grads = value_and_grad(input_ids, segment_ids, sel, targets, weights, scale)
            return loss_sum, grads

        def ev(input_ids, segment_ids, sel, targets, weights):
            return self._loss(input_ids, segment_ids, sel, targets, weights, mx.array(1.0))[1]

        clip = self.grad_clip

        def update(grads):
            if clip is not None:
                grads, _ = optimizers.clip_grad_norm(grads, clip)
            optimizer.update(model, grads)

        if self.compile:
            # nn.value_and_grad writes its traced parameters into the model, so model.state must be an
            # output as well as an input (as in mlx_lm.tuner.trainer), or tracers would stay behind.
            fb_state = [model.state, mx.random.state]
            fb = partial(mx.compile, inputs=fb_state, outputs=fb_state)(fb)
            ev = partial(mx.compile, inputs=[model.state])(ev)
            state = [model.state, optimizer.state]
            update = partial(mx.compile, inputs=state, outputs=state)(update)
        self._fb, self._ev, self._update = fb, ev, update

    def _token_cost(self, width: int) -> float:
        """Relative forward cost of one token in a row of `width` tokens: the blocks' linear layers
        plus masked T x T attention (scores and weighted sum over all `width` keys)."""
        a = self._arch
        return a["linear"] + 2.0 * width * a["attn_width"]

    def _arrays(self, batch: Batch):
        """Model inputs plus the positions whose next token is a target.

        Uncompiled (the CPU default), two exact savings:
        - the rows are re-laid out (`relayout`): padding dropped and, when that is cheaper, the
          documents re-packed into shorter rows, because masked attention costs T x T per row whatever
          the segments are;
        - only target positions go through the LM head (prompts and padding never do: for a real
          vocabulary the head is a large share of the step).
        Compiled, shapes must stay fixed per [B, T]: the batch is used as given and every position
        b*T + t, t < T-1, is taken and weighted.
        """
        import mlx.core as mx

        ids = np.asarray(batch.input_ids, dtype=np.int32)
        lm = np.asarray(batch.loss_mask, dtype=np.float32)
        seg = np.asarray(batch.segment_ids, dtype=np.int32)
        if ids.ndim != 2 or ids.shape[1] < 2 or lm.shape != ids.shape or seg.shape != ids.shape:
            raise ValueError(f"batch arrays must share a [B, T>=2] shape, got {ids.shape}, {lm.shape}, {seg.shape}")
        if not self.compile and self.relayout:
            ids, lm, seg = relayout(ids, lm, seg, self._token_cost)
        self.last_layout = ids.shape
        B, T = ids.shape
        if self.compile:
            b, t = np.divmod(np.arange(B * (T - 1)), T - 1)
        else:
            b, t = np.nonzero(lm[:, 1:])
            if b.size == 0:  # no targets: one weight-0 position keeps every op non-empty
                b, t = np.zeros(1, np.int64), np.zeros(1, np.int64)
        sel = (b * T + t).astype(np.int32)
        return (mx.array(ids), mx.array(seg), mx.array(sel),
                mx.array(ids[b, t + 1]), mx.array(lm[b, t + 1]))

    # --------------------------------------------------------------- training
    def forward_backward(self, batch: Batch, scale: float) -> tuple[float, int]:
        import mlx.core as mx
        from mlx.utils import tree_map

        self._require_setup()
        self.model.train()
        loss_sum, grads = self._fb(*self._arrays(batch), mx.array(scale, dtype=mx.float32))
        if self._grads is None:
            self._grads = grads
        else:
            self._grads = tree_map(lambda a, b: a + b, self._grads, grads)
        mx.eval(loss_sum, self._grads)
        return float(loss_sum.item()), int(np.asarray(batch.loss_mask)[:, 1:].sum())

    def _grad_norm(self) -> float:
        import mlx.core as mx
        from mlx.utils import tree_reduce

        sq = tree_reduce(lambda acc, g: acc + g.astype(mx.float32).square().sum(), self._grads, mx.array(0.0))
        return float(mx.sqrt(sq).item())

    def optimizer_step(self, lr: float) -> StepResult:
        import mlx.core as mx

        self._require_setup()
        if self._grads is None:
            raise RuntimeError("optimizer_step() called before forward_backward()")
        norm = self._grad_norm()
        if not math.isfinite(norm):
            self._grads = None
            return StepResult(grad_norm=norm, applied=False)
        self.optimizer.learning_rate = lr
        self._update(self._grads)
        self._grads = None
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)
        return StepResult(grad_norm=norm, applied=True)

    def zero_grad(self) -> None:
        self._grads = None

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        self._require_setup()
        self.model.eval()
        try:
            loss_sum = self._ev(*self._arrays(batch))
            value = float(loss_sum.item())
        finally:
            self.model.train()
        return value, int(np.asarray(batch.loss_mask)[:, 1:].sum())

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray]:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        self._require_setup()
        adapters = tree_flatten(self.model.trainable_parameters())
        optim = tree_flatten(self.optimizer.state)
        key = mx.random.state[0]
        mx.eval([v for _, v in adapters], [v for _, v in optim], key)
        out: dict[str, np.ndarray] = {}
        for k, v in adapters:
            out[f"adapter/{k}"] = _to_numpy(v)
        for k, v in optim:
            out[f"optim/{k}"] = _to_numpy(v)
        out["rng/mlx_key"] = np.array(key, dtype=np.uint32, copy=True)
        return out

    def _adapter_weights(self, state: dict[str, np.ndarray], what: str) -> list:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        params = dict(tree_flatten(self.model.trainable_parameters()))
        given = {k[len("adapter/"):]: v for k, v in state.items() if k.startswith("adapter/")}
        missing = sorted(set(params) - set(given))
        extra = sorted(set(given) - set(params))
        bad = [f"{k}: {tuple(np.shape(given[k]))} != {tuple(params[k].shape)}"
               for k in params if k in given and tuple(np.shape(given[k])) != tuple(params[k].shape)]
        if missing or extra or bad:
            parts = []
            if missing:
                parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if extra:
                parts.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
            if bad:
                parts.append(f"shape mismatch {bad[:5]}")
            raise UserError(f"{what} does not match this model's LoRA adapters: {'; '.join(parts)}",
                            hint="resume with the same model, lora.rank, target_modules and layers")
        return [(k, mx.array(np.asarray(given[k])).astype(params[k].dtype)) for k in params]

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        self._require_setup()
        weights = self._adapter_weights(state, "checkpoint")
        opt_flat = dict(tree_flatten(self.optimizer.state))
        given = {k[len("optim/"):]: v for k, v in state.items() if k.startswith("optim/")}
        missing = sorted(set(opt_flat) - set(given))
        if missing or set(given) - set(opt_flat):
            raise UserError("checkpoint optimizer state does not match this model's adapters",
                            hint=f"missing: {missing[:5]}, unexpected: {sorted(set(given) - set(opt_flat))[:5]}")
        if "rng/mlx_key" not in state:
            raise UserError("checkpoint has no rng/mlx_key entry (was it written by the MLX backend?)")

        self.model.load_weights(weights, strict=False)
        # Set optimizer entries in place: the compiled update captured this very dict.
        for k, old in opt_flat.items():
            value = np.asarray(given[k])
            if tuple(value.shape) != tuple(old.shape):
                raise UserError(f"checkpoint optimizer entry {k} has shape {value.shape}, expected {old.shape}")
            _set_path(self.optimizer.state, k, mx.array(value).astype(old.dtype))
        key = np.asarray(state["rng/mlx_key"]).astype(np.uint64)
        mx.random.seed(int((int(key[0]) << 32) | int(key[1])))
        self._grads = None
        mx.eval(self.model.parameters(), self.optimizer.state, mx.random.state[0])

    def load_adapter_weights(self, state: dict[str, np.ndarray]) -> None:
        import mlx.core as mx

        self._require_setup()
        self.model.load_weights(self._adapter_weights(state, "init-from adapter"), strict=False)
        mx.eval(self.model.trainable_parameters())

    def export_adapter(self, path: Path) -> None:
        """adapters.safetensors + adapter_config.json, as `mlx_lm lora` writes them."""
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.utils import save_config

        self._require_setup()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = dict(tree_flatten(self.model.trainable_parameters()))
        mx.eval(weights)
        mx.save_safetensors(str(path / "adapters.safetensors"), weights)
        config = {
            "model": str(self.model_path),
            "fine_tune_type": "lora",
            "num_layers": self.num_layers,
            "lora_parameters": dict(self.lora_parameters),
            "specc_backend": "mlx",
            "specc_base_quantization": self._info.get("quantization"),
        }
        save_config(config, path / "adapter_config.json")

    # ------------------------------------------------------------ reporting
    def memory(self) -> MemoryStats:
        import mlx.core as mx

        current, peak = mx.get_active_memory(), mx.get_peak_memory()
        if peak > 0:
            return MemoryStats(current / 2**20, peak / 2**20, "mlx.get_active_memory/mlx.get_peak_memory")
        return _rss_stats()

    def describe(self) -> dict[str, object]:
        return dict(self._info)

    def _require_setup(self) -> None:
        if self.model is None:
            raise RuntimeError("MLXBackend.setup() must be called first")


def _runs(seg_row: np.ndarray) -> list[tuple[int, int]] | None:
    """(start, end) of each segment (> 0) in a row; None if a segment id is not one contiguous run."""
    change = np.flatnonzero(np.diff(seg_row)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [seg_row.size]])
    runs, seen = [], set()
    for a, b in zip(starts.tolist(), ends.tolist()):
        k = int(seg_row[a])
        if k == 0:
            continue
        if k in seen:
            return None
        seen.add(k)
        runs.append((a, b))
    return runs


def relayout(ids: np.ndarray, lm: np.ndarray, seg: np.ndarray, token_cost) -> tuple[np.ndarray, ...]:
    """Lay the batch's documents out as cheaply as possible, exactly.

    Attention is block-diagonal over segments and every document's first token is never a target, so
    a document's logits and loss depend only on its own tokens (RoPE is relative: where it sits in a
    row changes nothing but float rounding). That frees us to
    1. drop all-padding rows and trailing all-padding columns, and
    2. re-pack the documents (first-fit decreasing) into shorter rows when the modelled cost
       rows * width * token_cost(width) -- linear layers plus width x width masked attention -- drops by
       more than 10%. Packed rows of 512-2048 tokens holding 60-token documents otherwise spend most
       of the step on attention between documents that the mask then throws away.
    The result depends only on the batch, so it is deterministic (dropout and resume included).
    """
    real = seg > 0
    rows = np.flatnonzero(real.any(axis=1))
    if rows.size == 0:
        return ids, lm, seg
    last = max(int(np.flatnonzero(real[rows].any(axis=0))[-1]) + 1, 2)
    ids, lm, seg = ids[rows, :last], lm[rows, :last], seg[rows, :last]
    B, T = ids.shape

    docs = []  # (row, start, end)
    for r in range(B):
        runs = _runs(seg[r])
        # a target at a segment start would be predicted from the previous document: keep the layout
        if runs is None or any(lm[r, a] != 0 for a, _ in runs):
            return ids, lm, seg
        docs.extend((r, a, b) for a, b in runs)
    lengths = np.array([b - a for _, a, b in docs])
    longest = int(lengths.max())
    order = sorted(range(len(docs)), key=lambda i: (-lengths[i], i))

    def ffd(width: int) -> list[list[int]]:
        bins: list[list[int]] = []
        room: list[int] = []
        for i in order:
            n = int(lengths[i])
            for j, free in enumerate(room):
                if n <= free:
                    bins[j].append(i)
                    room[j] -= n
                    break
            else:
                bins.append([i])
                room.append(width - n)
        return bins

    best_cost = B * T * token_cost(T)
    best = None
    base = -(-longest // 8) * 8
    for width in sorted({min(base * m, T) for m in (1, 2, 3, 4)} | {max(longest, 2)}):
        if width >= T:
            continue
        bins = ffd(width)
        cost = len(bins) * width * token_cost(width)
        if cost < 0.9 * best_cost and (best is None or cost < best[0]):
            best = (cost, width, bins)
    if best is None:
        return ids, lm, seg
    _, width, bins = best
    new_ids = np.zeros((len(bins), width), ids.dtype)
    new_lm = np.zeros((len(bins), width), lm.dtype)
    new_seg = np.zeros((len(bins), width), seg.dtype)
    for r, members in enumerate(bins):
        col = 0
        for k, i in enumerate(sorted(members), start=1):
            src, a, b = docs[i]
            n = b - a
            new_ids[r, col:col + n] = ids[src, a:b]
            new_lm[r, col:col + n] = lm[src, a:b]
            new_seg[r, col:col + n] = k
            col += n
    return new_ids, new_lm, new_seg


def _checkpointed(layer, h, mask):
    """Recompute one block in the backward pass (mx.checkpoint over the block's trainable parameters).

    mlx-lm's tuner.trainer.grad_checkpoint patches the block *class* process-wide; this wraps the call only.
    """
    import mlx.core as mx

    def inner(params, x, m):
        layer.update(params)
        return layer(x, m, cache=None)

    return mx.checkpoint(inner)(layer.trainable_parameters(), h, mask)


def _set_path(tree, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _rss_stats() -> MemoryStats:
    current = 0.0
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return MemoryStats(current, max(peak_mb, current), "rss")


def _mlx_lm_version() -> str:
    try:
        from importlib.metadata import version

        return version("mlx-lm")
    except Exception:
        return "unknown"
