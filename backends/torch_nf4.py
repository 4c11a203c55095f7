"""bitsandbytes NF4 on the torch backend: keep the layout training can backpropagate through, and prove it.

bitsandbytes (0.48 and later) repacks a ``Linear4bit`` weight *in place* into a CPU inference layout
the first time the layer runs in eval mode on an input that does not require grad, on CPUs with
AVX-512 BF16 (``Linear4bit.support_avx512bf16_for_cpu``). Validation is exactly that call. From then
on every forward of the layer goes through ``bitsandbytes::gemv_4bit``, which has no autograd
kernel: torch warns and back-propagates *nothing* through the frozen base weight, so the LoRA
gradients of every earlier layer are silently wrong; for some shapes the repacking itself crashes.

specc turns the repacking off on every layer (`keep_trainable_layout`), and `check_gradient_flow`
verifies, after setup and after the first evaluation, that

* no quantized layer is in the inference layout,
* the input gradient of quantized layers equals the one computed from their dequantized weight
  (the first and last LoRA-wrapped layer and one of each shape), with no autograd warning, and
* a backward pass over the whole model reaches the LoRA weights of every wrapped layer.

Any failure stops the run with an error that names the library, its version and the workaround.
"""
from __future__ import annotations

import warnings

from specc.errors import UserError

# float32 compute is exact up to summation order; bf16 rounds the input and the dequantized weight.
PROBE_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}
AUTOGRAD_WARNING = "autograd kernel was not registered"


def _bnb():
    import bitsandbytes

    return bitsandbytes


def _library() -> str:
    return f"bitsandbytes {getattr(_bnb(), '__version__', '?')}"


def _workaround() -> str:
    return ("specc turns off bitsandbytes' CPU inference repacking (Linear4bit.support_avx512bf16_for_cpu) and this "
            "bitsandbytes did something else: install the version specc was tested with (constraints.txt; "
            "scripts/setup does), or set model.quantization: none for this run")


def quantized_layers(model) -> list[tuple[str, object]]:
    linear4bit = _bnb().nn.Linear4bit
    return [(name, m) for name, m in model.named_modules() if isinstance(m, linear4bit)]


def keep_trainable_layout(model) -> int:
    """Switch off bitsandbytes' in-place CPU inference repacking on every Linear4bit; return how many had it on."""
    n = 0
    for _, layer in quantized_layers(model):
        if getattr(layer, "support_avx512bf16_for_cpu", False):
            n += 1
        layer.support_avx512bf16_for_cpu = False
    return n


def _repacked(layer) -> bool:
    return bool(getattr(getattr(layer.weight, "quant_state", None), "packing_format_for_cpu", False))


def _lora_wrapped(model) -> list[tuple[str, object, object]]:
    """(name, peft LoRA module, its quantized base layer) in model order."""
    linear4bit = _bnb().nn.Linear4bit
    out = []
    for name, m in model.named_modules():
        base = getattr(m, "base_layer", None)
        if isinstance(base, linear4bit) and hasattr(m, "lora_B"):
            out.append((name, m, base))
    return out


def check_gradient_flow(model, when: str) -> None:
    """Raise UserError unless gradients flow through every quantized base layer into every LoRA weight."""
    import torch

    layers = quantized_layers(model)
    if not layers:
        return
    bad = [name for name, layer in layers if _repacked(layer)]
    if bad:
        raise UserError(
            f"{_library()} switched {len(bad)} quantized layer(s) (first: {bad[0]}) into its CPU inference "
            f"layout {when}; that layout has no backward pass, so training would use wrong gradients",
            hint=_workaround())
    wrapped = _lora_wrapped(model)
    for name, base in _probe_choice(wrapped):
        _probe_layer(torch, name, base, when)
    _probe_model(torch, model, wrapped, when)


def _probe_choice(wrapped) -> list[tuple[str, object]]:
    """The first and last LoRA-wrapped quantized layer, and the first one of every other shape."""
    chosen: dict[str, object] = {}
    shapes = set()
    for i, (name, _, base) in enumerate(wrapped):
        shape = (base.in_features, base.out_features)
        if i in (0, len(wrapped) - 1) or shape not in shapes:
            chosen[name] = base
        shapes.add(shape)
    return list(chosen.items())


def _probe_layer(torch, name: str, base, when: str) -> None:
    """d(sum(g * base(x)))/dx through bitsandbytes against g @ dequantized W, in the layer's compute dtype."""
    F = _bnb().functional
    weight = base.weight
    dtype = base.compute_dtype or torch.float32
    device = weight.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, base.in_features, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.randn(3, base.out_features, generator=gen).to(device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.enable_grad():
            y = base(x)
            if y.requires_grad:
                (y.float() * g.float()).sum().backward()
    _no_autograd_warning(caught, name, when)
    if x.grad is None:
        raise UserError(f"{_library()}: no gradient reaches the input of quantized layer {name} {when}",
                        hint=_workaround())
    w = F.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
    want = g.float() @ w
    err = float((x.grad.float() - want).abs().max() / want.abs().max().clamp_min(1e-12))
    tol = PROBE_TOLERANCE.get(str(dtype).removeprefix("torch."), 3e-2)
    if not err <= tol:
        raise UserError(
            f"{_library()}: the gradient through quantized layer {name} differs from its dequantized weight's "
            f"by {err:.3g} (relative; allowed {tol:g}) {when}; training would use wrong gradients",
            hint=_workaround())


def _probe_model(torch, model, wrapped, when: str) -> None:
    """One backward pass over a short synthetic sequence: every wrapped layer's LoRA B gets a finite, non-zero gradient."""
    if not wrapped:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    emb = model.get_input_embeddings()
    device = emb.weight.device
    vocab = emb.weight.shape[0]
    ids = (torch.arange(1, 17, device=device) * 7919 % max(vocab - 1, 1)).unsqueeze(0)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                warnings.catch_warnings(record=True) as caught, torch.enable_grad():
            warnings.simplefilter("always")
            out = model(input_ids=ids, use_cache=False)
            if out.logits.requires_grad:
                out.logits.float().logsumexp(-1).sum().backward()
        _no_autograd_warning(caught, "the model", when)
        missing = []
        for name, lora, _ in wrapped:
            grads = [p.grad for p in lora.lora_B.parameters()]
            if not grads or any(g is None or not bool(torch.isfinite(g).all()) for g in grads) \
                    or all(float(g.abs().max()) == 0.0 for g in grads):
                missing.append(name)
        if missing:
            raise UserError(
                f"{_library()}: no gradient reaches the LoRA weights of {len(missing)} of {len(wrapped)} wrapped "
                f"layer(s) (first: {missing[0]}) {when}; training would silently skip them",
                hint=_workaround())
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def _no_autograd_warning(caught, name: str, when: str) -> None:
    for w in caught:
        if AUTOGRAD_WARNING in str(w.message):
            raise UserError(
                f"{_library()}: backpropagating through {name} {when} hit an operator without an autograd kernel "
                f"(torch: {str(w.message).split('.')[0]}); gradients through the quantized base would be wrong",
                hint=_workaround())
