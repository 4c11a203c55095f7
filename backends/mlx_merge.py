"""The merged export of the MLX backend: base + LoRA as one Hugging Face model directory.

mlx-lm's own fuse (`LoRALinear.fuse(dequantize=True)`: W + scale * B^T A^T, on the dequantized weight
when the base was quantized) and `dequantize_model` for the layers without LoRA, then the weights
are written with `mlx_lm.utils.save_model` (Hugging Face parameter names for the Llama family, so
transformers reads them too) next to the base's config.json, without its quantization entries.
"""
from __future__ import annotations

import json
from pathlib import Path

from backends.common import copy_side_files


def export_merged(be, path: Path) -> dict[str, object]:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, save_model

    model = be.model
    fused = [(n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if not fused:
        raise RuntimeError("no LoRA layers to merge")
    model.update_modules(tree_unflatten(fused))
    dtype = str(be.dtype).replace("mlx.core.", "")
    facts: dict[str, object] = {"dtype": dtype, "merged_modules": len(fused), "dequantized": None}
    if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()):
        model = dequantize_model(model)
        q = be.describe().get("quantization") or {}
        facts["dequantized"] = f"MLX affine {q.get('bits', 4)}-bit (group {q.get('group_size', 64)}) -> {dtype}"
    mx.eval(model.parameters())
    path.mkdir(parents=True, exist_ok=True)
    save_model(path, model)
    config = json.loads((Path(be.model_path) / "config.json").read_text(encoding="utf-8"))
    for key in ("quantization", "quantization_config"):
        config.pop(key, None)
    config["dtype" if "dtype" in config else "torch_dtype"] = dtype
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    facts["files"] = copy_side_files(be.model_path, path)
    be.model = None   # spent: the LoRA layers are fused
    return facts
