"""Loading for the MLX backend: device, the mlx-lm model and its RoPE settings, QLoRA quantization, LoRA.

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
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from backends.common import load_error, lora_blocks, quantization
from backends.layout import MLX_BLOCK_KEYS
from backends.protocol import LoraSettings
from specc.errors import UserError

QUANT_BITS = 4
QUANT_GROUP_SIZE = 64
QUANT_MODE = "affine"

# mlx-lm model types whose modules have the structure we drive directly:
# model.model.{embed_tokens, layers[i](h, mask, cache), norm} and lm_head or tied embeddings.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# HF module names -> path inside an mlx-lm transformer block.
HF_TO_MLX_KEYS = MLX_BLOCK_KEYS


def select_device(device: str):
    """Make `device` (auto | cpu | gpu) MLX's default device and return it."""
    import mlx.core as mx

    if device == "cpu":
        mx.set_default_device(mx.cpu)
    elif device == "gpu":
        if not mx.is_available(mx.gpu):
            raise UserError("model.device is 'gpu' but MLX has no GPU here (mlx[cpu] on Linux is CPU-only)",
                            hint="use device: auto or cpu", where="model.device")
        mx.set_default_device(mx.gpu)
    elif device != "auto":
        raise UserError(f"unknown MLX device {device!r}", hint="use auto, cpu or gpu", where="model.device")
    return mx.default_device()


def rope_overrides(path: Path) -> dict:
    """transformers>=5 writes `rope_parameters`; mlx-lm's llama-family loaders read `rope_theta`/`rope_scaling`.

    `path` passed common.model_dir, so its config.json is a JSON object."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    params = config.get("rope_parameters")
    out: dict = {}
    if isinstance(params, dict):
        if "rope_theta" not in config and "rope_theta" in params:
            out["rope_theta"] = params["rope_theta"]
        rope_type = params.get("rope_type", params.get("type", "default"))
        if config.get("rope_scaling") is None and rope_type not in (None, "default"):
            out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return out


def load(path: Path):
    """(the mlx-lm model, its config) for a supported model type."""
    from mlx_lm.utils import load_model

    overrides = rope_overrides(path)
    try:
        net, config = load_model(path, lazy=False, model_config=overrides or None)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        raise load_error(path, f"mlx-lm: {exc}") from exc
    model_type = config.get("model_type")
    inner = getattr(net, "model", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not all(
            hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        raise UserError(f"the MLX backend does not support model_type {model_type!r}",
                        hint=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}; or use the torch backend",
                        where="model.path")
    return net, config


def quantize(net, config: dict, requested: str):
    """(the model, facts for describe()): QLoRA is MLX affine 4-bit, group 64, exactly as mlx_lm.convert -q."""
    import mlx.nn as nn
    from mlx_lm.utils import quantize_model

    quant: dict[str, Any] = {"requested": quantization(requested)}
    if "quantization" in config:
        quant.update(method="pre-quantized checkpoint", **config["quantization"])
    elif requested == "nf4":
        # mlx-lm's own QLoRA recipe (what `mlx_lm.convert -q --q-bits 4 --q-group-size 64`
        # does): every Linear/Embedding whose input dim divides by the group size, lm_head and
        # (tied) embeddings included, so an exported adapter sits on exactly that base.
        skipped = [p for p, m in net.named_modules()
                   if hasattr(m, "to_quantized") and m.weight.shape[-1] % QUANT_GROUP_SIZE]
        with contextlib.redirect_stdout(io.StringIO()):  # it prints bits-per-weight
            net, _ = quantize_model(net, config, group_size=QUANT_GROUP_SIZE, bits=QUANT_BITS, mode=QUANT_MODE)
        n_quant = sum(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in net.named_modules())
        quant.update(
            method=f"mlx {QUANT_MODE} {QUANT_BITS}-bit (per-group scale and bias), not NF4",
            bits=QUANT_BITS, group_size=QUANT_GROUP_SIZE, mode=QUANT_MODE,
            quantized_modules=n_quant, skipped_modules=skipped,
            scope="as mlx_lm.convert -q: all Linear and Embedding layers (lm_head and embeddings "
                  "included) whose input dim divides by the group size",
            reproduce=f"mlx_lm.convert --hf-path <base> -q --q-bits {QUANT_BITS} --q-group-size {QUANT_GROUP_SIZE}",
        )
    return net, quant


def lora_targets(inner, lora: LoraSettings, model_type: str) -> tuple[int, list[str]]:
    """(blocks from the end that get adapters, mlx-lm module keys) for lora.layers and lora.target_modules."""
    import mlx.nn as nn

    num_layers = lora_blocks(lora, len(inner.layers))
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


def add_lora(net, lora: LoraSettings, model_type: str, seed: int) -> tuple[int, list[str], dict]:
    """Wrap the target modules of the last blocks in mlx-lm's LoRALinear, A drawn from `seed`."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    num_layers, keys = lora_targets(net.model, lora, model_type)
    parameters = {"rank": int(lora.rank), "scale": float(lora.alpha) / float(lora.rank),
                  "dropout": float(lora.dropout), "keys": keys}
    mx.random.seed(seed)
    linear_to_lora_layers(net, num_layers, parameters)
    return num_layers, keys, parameters


def mlx_lm_version() -> str:
    try:
        from importlib.metadata import version

        return version("mlx-lm")
    except Exception:
        return "unknown"
