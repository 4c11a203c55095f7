"""Apple MLX backend (mlx + mlx-lm): LoRA and QLoRA on Apple silicon, and on Linux through `mlx[cpu]`.

The pieces, each with the MLX facts behind it in its own docstring: loading, RoPE settings, QLoRA
quantization and LoRA in backends/mlx_load.py; the attention mask, the loss and the (compiled) step
functions in backends/mlx_forward.py; the batch re-layout that keeps masked attention cheap in
backends/mlx_layout.py. This module holds the backend itself:

- Checkpoints: MLX is lazy, so everything is `mx.eval`ed before it is converted to numpy; only arrays
  are saved. bfloat16 values are widened to float32 (exact) and narrowed back on load (exact).
- Export: `adapters.safetensors` + `adapter_config.json`, exactly what `mlx_lm lora` writes, so
  `mlx_lm.load(base, adapter_path=...)`, `mlx_lm generate --adapter-path` and `mlx_lm fuse` work.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from backends.common import adapter_arrays, check_keys, check_shape, dtype_name, entries, model_dir, rss_memory
from backends.layout import canonical_name, is_canonical
from backends.mlx_forward import Forward, build_steps
from backends.mlx_layout import arch_costs, model_inputs, token_cost
from backends.mlx_load import add_lora, load, mlx_lm_version, quantize, select_device
from backends.protocol import (Batch, GenerationSettings, LoraSettings, MemoryStats, ModelSettings, OptimizerSettings,
                               StepResult)
from specc.errors import UserError

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
        self.relayout = True       # re-pack documents into cheaper rows (uncompiled path); see mlx_layout.relayout()
        self.last_layout: tuple[int, ...] | None = None
        # None = decide in setup(): compile on the GPU (Metal), not on the CPU, where mx.compile JIT-builds
        # C++ kernels with the system compiler (tens of seconds per new shape) and the step got slower.
        env = os.environ.get("SPECC_MLX_COMPILE", "").strip().lower()
        self.compile: bool | None = None if env in ("", "auto") else env not in ("0", "false", "no", "off")

    # ------------------------------------------------------------------ setup
    def setup(self, model: ModelSettings, lora: LoraSettings | None, optim: OptimizerSettings, seed: int) -> None:
        import mlx.core as mx
        import mlx.optimizers as optimizers
        from mlx.utils import tree_flatten
        from mlx_lm.utils import get_total_parameters

        path = model_dir(model.path, weights=("model*.safetensors",), need_tokenizer=False)  # mlx-lm reads safetensors only
        device = select_device(model.device)
        on_gpu = device.type == mx.gpu
        if self.compile is None:
            self.compile = on_gpu

        net, config = load(path)
        model_type = config.get("model_type")
        dtype = getattr(mx, dtype_name(model.dtype, on_gpu))
        net.set_dtype(dtype)
        net, quant = quantize(net, config, model.quantization)

        # LoRA (none for a control run: the base model alone, evaluated)
        n_blocks = len(net.model.layers)
        net.freeze()
        num_layers, keys, self.lora_parameters = 0, [], None
        if lora is not None:
            num_layers, keys, self.lora_parameters = add_lora(net, lora, model_type, seed)
        net.train()
        mx.eval(net.parameters())

        self.model = net
        self.model_path = path
        self.num_layers = num_layers
        self.config = config
        self.dtype = dtype
        self.grad_checkpoint = bool(model.gradient_checkpointing)
        self.grad_clip = optim.grad_clip
        self._arch = arch_costs(net.args)
        self._forward = Forward(net, self.grad_checkpoint)

        # Optimizer, initialised now so its state exists (and has a fixed structure) before step 1.
        self.optimizer = optimizers.AdamW(
            learning_rate=0.0, betas=list(optim.betas), eps=optim.eps,
            weight_decay=optim.weight_decay, bias_correction=True,
        )
        self.optimizer.init(net.trainable_parameters())
        mx.eval(self.optimizer.state)
        self._grads = None
        self._fb, self._ev, self._update = build_steps(self._forward, self.optimizer, self.grad_clip, self.compile)

        trainable = sum(v.size for _, v in tree_flatten(net.trainable_parameters()))
        self._info = {
            "backend": "mlx",
            "device": str(device),
            "mlx_version": mx.__version__,
            "mlx_lm_version": mlx_lm_version(),
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

    # ------------------------------------------------------------- model pass
    def _logits(self, input_ids, segment_ids):
        return self._forward.logits(input_ids, segment_ids)

    def _token_cost(self, width: int) -> float:
        """Relative forward cost of one token in a row of `width` tokens (backends/mlx_layout.py)."""
        return token_cost(self._arch, width)

    def _arrays(self, batch: Batch):
        """The model inputs as mlx arrays (backends/mlx_layout.py: model_inputs); records the layout used."""
        import mlx.core as mx

        arrays = model_inputs(batch, fixed_shape=bool(self.compile), repack=self.relayout, cost=self._token_cost)
        self.last_layout = arrays[0].shape
        return tuple(mx.array(a) for a in arrays)

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

    def generate(self, prompts: list[list[int]], settings: GenerationSettings) -> list[list[int]]:
        from backends.mlx_generate import generate

        self._require_setup()
        return generate(self, prompts, settings)

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
        """The checkpoint's adapter entries as mlx arrays in the parameters' dtypes (common.adapter_arrays checks)."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        params = dict(tree_flatten(self.model.trainable_parameters()))
        arrays = adapter_arrays(state, {k: v.shape for k, v in params.items()}, what)
        return [(k, mx.array(arrays[k]).astype(params[k].dtype)) for k in params]

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        self._require_setup()
        weights = self._adapter_weights(state, "checkpoint")
        opt_flat = dict(tree_flatten(self.optimizer.state))
        given = entries(state, "optim")
        check_keys("checkpoint optimizer state", opt_flat, given)
        if "rng/mlx_key" not in state:
            raise UserError("checkpoint has no rng/mlx_key entry (was it written by the MLX backend?)")

        self.model.load_weights(weights, strict=False)
        # Set optimizer entries in place: the compiled update captured this very dict.
        for k, old in opt_flat.items():
            value = check_shape(f"optim/{k}", given[k], old.shape)
            _set_path(self.optimizer.state, k, mx.array(value).astype(old.dtype))
        key = np.asarray(state["rng/mlx_key"]).astype(np.uint64)
        mx.random.seed(int((int(key[0]) << 32) | int(key[1])))
        self._grads = None
        mx.eval(self.model.parameters(), self.optimizer.state, mx.random.state[0])

    def load_adapter_weights(self, state: dict[str, np.ndarray]) -> None:
        import mlx.core as mx

        self._require_setup()
        if is_canonical(state):   # a checkpoint's arrays as they are (backends/layout.py)
            state = self.from_canonical({k: v for k, v in state.items() if k.startswith("adapter/")})
        self.model.load_weights(self._adapter_weights(state, "init-from adapter"), strict=False)
        mx.eval(self.model.trainable_parameters())

    # ------------------------------------------------- canonical layout (backends/layout.py)
    def to_canonical(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for k, v in entries(state, "adapter").items():
            out[f"adapter/{canonical_name(k)}"] = np.ascontiguousarray(v.T)   # mlx-lm's [in, r] / [r, out] -> PEFT's
        for k, v in entries(state, "optim").items():
            if k == "step":
                out["optim/step"] = np.asarray(v, dtype=np.int64)
            elif k.endswith((".m", ".v")):
                moment = "exp_avg" if k.endswith(".m") else "exp_avg_sq"
                out[f"optim/{canonical_name(k[:-2])}/{moment}"] = np.ascontiguousarray(v.T)
            elif k != "learning_rate":   # the engine sets the lr before every update
                raise RuntimeError(f"unexpected mlx optimizer state entry {k!r}")
        out.update({k: v for k, v in state.items() if k.startswith("rng/mlx_")})
        return out

    def from_canonical(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        self._require_setup()
        names = {canonical_name(k): k for k, _ in tree_flatten(self.model.trainable_parameters())}
        given = [k[len("adapter/"):] for k in arrays if k.startswith("adapter/")]
        if given:   # name mismatches in canonical names (the converted ones would only confuse)
            check_keys("adapter weights", names, given)
        out: dict[str, np.ndarray] = {}
        for canon, native in names.items():
            if f"adapter/{canon}" in arrays:
                out[f"adapter/{native}"] = np.asarray(arrays[f"adapter/{canon}"]).T
            for moment, leaf in (("exp_avg", "m"), ("exp_avg_sq", "v")):
                if f"optim/{canon}/{moment}" in arrays:
                    out[f"optim/{native}.{leaf}"] = np.asarray(arrays[f"optim/{canon}/{moment}"]).T
        if "optim/step" in arrays:
            out["optim/step"] = np.asarray(arrays["optim/step"], dtype=np.uint64)
            out["optim/learning_rate"] = _to_numpy(self.optimizer.state["learning_rate"])
        out["rng/mlx_key"] = (np.asarray(arrays["rng/mlx_key"]) if "rng/mlx_key" in arrays else
                              np.array(mx.random.state[0], dtype=np.uint32, copy=True))
        return out

    def export_merged(self, path: Path) -> dict[str, object]:
        from backends.mlx_merge import export_merged

        self._require_setup()
        return export_merged(self, Path(path))

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
        return rss_memory()

    def describe(self) -> dict[str, object]:
        return dict(self._info)

    def _require_setup(self) -> None:
        if self.model is None:
            raise RuntimeError("MLXBackend.setup() must be called first")


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
