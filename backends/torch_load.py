"""Loading for the torch backend: device, dtype and threads, the HF model, bitsandbytes NF4, peft's LoRA.

* Attention implementation: sdpa, else eager (both take the explicit 4-D mask of torch_attention).
* QLoRA. ``prepare_model_for_kbit_training`` is deliberately not called: it upcasts every
  non-quantized weight (embeddings and LM head included) to float32 and turns on gradient
  checkpointing behind the spec's back. Here the base is frozen by peft, LoRA weights are float32
  (peft's ``autocast_adapter_dtype``), and gradient checkpointing follows
  ``ModelSettings.gradient_checkpointing`` (non-reentrant, so no input-grad hook is needed).
  bitsandbytes quantizes while the weights move to their device, so they are placed there directly.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from backends.common import dtype_name, load_error, quantization
from backends.protocol import LoraSettings, ModelSettings
from specc.errors import UserError


def resolve_device(torch, device: str):
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device in ("cuda", "gpu") or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"model.device is {device!r} but torch sees no CUDA device",
                            hint=f"torch {torch.__version__} (cuda build: {torch.version.cuda}); use device: auto or cpu")
        return torch.device("cuda" if device == "gpu" else device)
    raise UserError(f"unknown device {device!r} for the torch backend", hint="use auto, cpu or cuda")


def clamp_threads(torch) -> None:
    """Never run more intra-op threads than CPUs this process may use (a SLURM allocation or
    taskset): oversubscribed OpenMP threads spin against each other. Fewer is left alone."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    if torch.get_num_threads() > allowed:
        torch.set_num_threads(allowed)


def _device_map_target(torch, device):
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return "cpu"


def _nf4_config(transformers, dtype) -> tuple[object, dict[str, object]]:
    """(BitsAndBytesConfig, the facts for describe()) for NF4 with double quantization."""
    try:
        import bitsandbytes
    except Exception as exc:  # ImportError or a broken native library
        raise UserError(f"quantization: nf4 needs bitsandbytes, which failed to import: {exc}",
                        hint="pip install 'specc[torch]' or set model.quantization: none") from exc
    details = dict(quant_type="nf4", compute_dtype=str(dtype).removeprefix("torch."), double_quant=True,
                   quant_storage="uint8", bitsandbytes=getattr(bitsandbytes, "__version__", "?"))
    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
    return config, details


def load_base(torch, path: Path, model: ModelSettings):
    """(the HF model, device, dtype, quantization, bitsandbytes facts or None), in train-ready placement."""
    import transformers

    quant = quantization(model.quantization)
    device = resolve_device(torch, model.device)
    if device.type == "cpu":
        clamp_threads(torch)
    dtype = getattr(torch, dtype_name(model.dtype, device.type == "cuda"))
    kwargs: dict[str, object] = dict(local_files_only=True, dtype=dtype)
    bnb_details: dict[str, object] | None = None
    if quant == "nf4":
        kwargs["quantization_config"], bnb_details = _nf4_config(transformers, dtype)
    if quant == "nf4" or device.type == "cuda":  # straight onto the device instead of staging in host memory
        kwargs["device_map"] = {"": _device_map_target(torch, device)}

    # The per-tensor "Loading weights" bar would land in every run log and SLURM log.
    transformers.utils.logging.disable_progress_bar()
    base = None
    for attn in ("sdpa", "eager"):
        try:
            base = transformers.AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attn, **kwargs)
            break
        except ValueError as exc:
            if attn == "sdpa" and "scaled_dot_product_attention" in str(exc):
                continue  # the architecture has no SDPA support; eager takes the same 4-D mask
            raise load_error(path, str(exc)) from exc
        except Exception as exc:  # corrupt weights, unknown architecture, bad config values, ...
            raise load_error(path, f"{type(exc).__name__}: {exc}") from exc
    if "device_map" not in kwargs:
        base.to(device)
    base.config.use_cache = False
    return base, device, dtype, quant, bnb_details


def with_lora(torch, base, lora: LoraSettings, layers_to_transform, seed: int):
    """peft's LoRA on the base, A initialised from `seed` alone (B starts at zero: the base model exactly)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), layers_to_transform=layers_to_transform,
        bias="none", task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    try:
        with warnings.catch_warnings():  # peft asks the deprecated is_gradient_checkpointing (transformers 5)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(base, config)
    except ValueError as exc:
        raise UserError(f"could not add LoRA adapters: {exc}",
                        hint="lora.target_modules must name Linear layers of the model, e.g. q_proj, v_proj") from exc


def enable_checkpointing(hf) -> None:
    """Non-reentrant activation checkpointing (no input-grad hook needed with a frozen base)."""
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5 name
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_liger(torch, base, device) -> list[str]:
    """Liger's RMSNorm, SwiGLU and RoPE kernels on the loaded base (before peft wraps it); the names applied.
    Its RoPE replaces a module-level function of the model type: process-wide, like Liger itself does it."""
    if device.type != "cuda":
        raise UserError("model.liger needs CUDA: Liger's kernels are Triton kernels",
                        hint="set model.liger: false on the CPU", where="model.liger")
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except Exception as exc:   # not installed, or triton broken
        raise UserError(f"model.liger: liger-kernel failed to import: {exc}",
                        hint="pip install 'specc[cuda]' or set model.liger: false", where="model.liger") from exc
    kinds = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    _apply_liger_kernel_to_instance(model=base, **kinds)
    return ["rms_norm", "swiglu", "rope", "fused_linear_cross_entropy (loss)"]


def compile_layers(torch, hf) -> int:
    """torch.compile every decoder layer in place (module names, and so adapter names, stay); how many.
    The packed-attention kernels stay outside the compiled graphs (backends/torch_packed.py)."""
    layers = getattr(getattr(hf, "model", hf), "layers", None)
    if layers is None:
        raise UserError("model.compile: this model has no decoder layer list (model.layers) to compile",
                        hint="set model.compile: false", where="model.compile")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def adamw(torch, params: list, optim):
    """(torch.optim.AdamW or None without trainable parameters, whether it is the fused kernel). The fused
    kernel (CPU and CUDA) is several times faster than the per-tensor loop for the hundreds of small LoRA
    tensors of a real model, and like it, each update depends only on (param, grad, state): resuming from
    state() stays bit-exact (tested)."""
    fused = all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    if not params:
        return None, fused
    return torch.optim.AdamW(params, lr=0.0, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay,
                             **({"fused": True} if fused else {"foreach": False})), fused


def logical_params(torch, model, quant: str) -> int:
    """The model's parameter count; Params4bit stores two 4-bit values per uint8 element: count logical weights."""
    nf4 = quant == "nf4"
    return int(sum(p.numel() * (2 if nf4 and p.dtype == torch.uint8 else 1) for p in model.parameters()))
