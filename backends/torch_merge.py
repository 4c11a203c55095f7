"""The merged export of the torch backend: base + LoRA as one Hugging Face model directory.

peft computes each module's delta (`get_delta_weight`: B @ A times its scaling), `unload()` takes the
LoRA layers out again, and for a QLoRA run transformers' `dequantize()` turns the bitsandbytes NF4
layers back into plain Linear layers holding exactly the dequantized weights the forward pass used.
The delta is added in float32 and the sum stored in the training dtype, so the directory holds the
model training saw (the NF4 rounding included), loadable without bitsandbytes.
"""
from __future__ import annotations

import json
from pathlib import Path

from backends.common import copy_side_files
from backends.layout import PEFT_PREFIX


def export_merged(be, path: Path) -> dict[str, object]:
    torch = be._torch
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in be.model.named_modules():
        if isinstance(module, LoraLayer) and "default" in getattr(module, "lora_A", {}):
            deltas[name.removeprefix(PEFT_PREFIX)] = module.get_delta_weight("default").detach().float()
    if not deltas:
        raise RuntimeError("no LoRA layers to merge")
    base = be.model.unload()
    facts: dict[str, object] = {"dtype": str(be.dtype).removeprefix("torch."), "merged_modules": len(deltas),
                                "dequantized": None}
    if be._quantized:
        base = base.dequantize(dtype=be.dtype)
        facts["dequantized"] = f"bitsandbytes NF4 (double quantization) -> {facts['dtype']}"
    with torch.no_grad():
        for name, delta in deltas.items():
            linear = base.get_submodule(name)
            linear.weight.copy_((linear.weight.float() + delta.to(linear.weight.device)).to(linear.weight.dtype))
    base.config.use_cache = True
    path.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(str(path), safe_serialization=True)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    facts["files"] = copy_side_files(be.model_path, path)
    be.model = None   # spent: the LoRA layers are gone
    return facts
