"""PyTorch backend: Hugging Face transformers model + PEFT LoRA (+ bitsandbytes NF4 for QLoRA).

The backend owns only the model (see backends/protocol.py): it loads a local HF directory, adds
LoRA adapters with peft, runs forward/backward on batches the engine built, applies AdamW and moves
its trainable state to and from numpy. LoRA is peft's and quantization is bitsandbytes'; nothing
here re-implements either.

Beside it: torch_load (loading, QLoRA, compile, Liger, AdamW), torch_packed (packed attention without a dense
mask), torch_attention (the dense mask, trimmed padding), torch_loss, torch_nf4 (the layout guard), torch_gpu (NVML).

* Loss. The decoder runs once; the LM head and a float32 cross-entropy run only on hidden states
  at target positions (loss_mask[:, 1:] != 0), not on the full [B, T, vocab] logits, and in chunks
  of model.loss_chunk targets. For model types whose head is not a plain linear layer
  (soft-capping, logit scaling) the full forward is used instead.
* Optimizer. torch.optim.AdamW with the fused kernel (CPU and CUDA): an update depends only on
  (param, grad, state), so resuming from ``state()`` is bit-exact, and it is much faster than the
  per-tensor loop for the hundreds of small LoRA tensors of a real model.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np

from backends.common import adapter_arrays, check_keys, check_shape, entries, lora_blocks, model_dir, rss_memory
from backends.layout import canonical_name, is_canonical
from backends.protocol import (Batch, GenerationSettings, LoraSettings, MemoryStats, ModelSettings, OptimizerSettings,
                               StepResult)
from backends.torch_attention import AttentionInputs, trim
from backends.torch_gpu import GpuMonitor
from backends.torch_load import (adamw, apply_liger, compile_layers, enable_checkpointing, load_base, logical_params,
                                 with_lora)
from backends.torch_loss import HeadLoss, gathered_head_is_exact
from backends.torch_packed import AttentionMode, flatten

OPTIM_ENTRIES = ("exp_avg", "exp_avg_sq", "step")


class TorchBackend:
    name = "torch"

    def __init__(self) -> None:
        self.model = None
        self._described: dict[str, object] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, model: ModelSettings, lora: LoraSettings | None, optim: OptimizerSettings, seed: int) -> None:
        path = model_dir(model.path)
        import torch
        import transformers

        self._torch = torch
        self.optim_settings = optim
        base, self.device, self.dtype, quant, bnb_details = load_base(torch, path, model)
        self.attn_implementation = base.config._attn_implementation
        liger = apply_liger(torch, base, self.device) if model.liger else []

        n_layers = int(getattr(base.config, "num_hidden_layers", 0) or 0)
        layers_to_transform = None
        if lora is None:   # a control run: the base model alone, evaluated; nothing trains
            self.model = base.requires_grad_(False)
        else:
            if lora.layers is not None:
                layers_to_transform = list(range(n_layers - lora_blocks(lora, n_layers), n_layers))
            self.model = with_lora(torch, base, lora, layers_to_transform, seed)
        if model.gradient_checkpointing:
            enable_checkpointing(self._hf())
        compiled = compile_layers(torch, self._hf()) if model.compile else 0
        self.model.train()
        self._quantized = quant == "nf4"
        self._flow_checked_after_eval = not self._quantized
        if self._quantized:
            from backends.torch_nf4 import check_gradient_flow, keep_trainable_layout

            repacking = keep_trainable_layout(self.model)
            bnb_details["cpu_inference_repacking"] = f"disabled on {repacking} layers" if repacking else "not used"
            check_gradient_flow(self.model, "after setup")

        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.trainable]
        self.optimizer, self._fused = adamw(torch, self.params, optim)

        hf = self._hf()
        self._plain_head = gathered_head_is_exact(hf)
        self._decoder = hf.get_decoder() if self._plain_head else None
        self._head = hf.get_output_embeddings() if self._plain_head else None
        self._attention = AttentionInputs(torch, self.device, hf.get_input_embeddings().weight.dtype)
        self._attn = AttentionMode(torch, model.attention, self.device, self.dtype, hf.config, self.attn_implementation,
                                   training=lora is not None)
        self._head_loss = HeadLoss(torch, self._head, model.loss_chunk, liger=bool(liger)) if self._plain_head else None
        self._gpu = GpuMonitor(torch, self.device) if self.device.type == "cuda" else None
        self._autocast = bool(self.params) and self.dtype in (torch.bfloat16, torch.float16)

        self._described = {
            "backend": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "quantization": quant,
            "quantization_details": bnb_details,
            "params_total": logical_params(torch, self.model, quant),
            "params_trainable": int(sum(p.numel() for p in self.params)),
            "trainable_tensors": len(self.params),
            "attn_implementation": self.attn_implementation,
            "gradient_checkpointing": bool(model.gradient_checkpointing),
            "lora_layers": "none (base model only)" if lora is None else
                           layers_to_transform if layers_to_transform is not None else f"all {n_layers}",
            "loss_head": "gathered targets" if self._plain_head else "full logits",
            "loss": self._head_loss.describe() if self._head_loss else "full logits, float32 cross-entropy",
            "loss_chunk": int(model.loss_chunk),
            "attention": self._attn.describe(),
            "lora_compute": (f"{str(self.dtype).removeprefix('torch.')} (autocast; float32 weights, gradients, AdamW)"
                             if self._autocast else "float32"),
            "compile": f"torch.compile on {compiled} decoder layers" if compiled else False,
            "liger": liger or False,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "optimizer": "torch.optim.AdamW (" + ("fused" if self._fused else "single-tensor") + ")",
            "model_path": str(path),
        }
        if self.device.type == "cuda":
            self._described.update(gpu=torch.cuda.get_device_name(self.device), cuda=torch.version.cuda,
                                   nvml=self._gpu.describe())
        self.model_path = path

    def _hf(self):
        """The transformers model under peft's wrapper (or the model itself, without LoRA)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    # ------------------------------------------------------------- batches
    def _attention_inputs(self, batch: Batch):
        """(attention_mask or None, position_ids or None) for the model call (backends/torch_attention.py)."""
        return self._attention(batch)

    _trim = staticmethod(trim)

    def _loss(self, batch: Batch):
        """Float32 sum of weighted token cross-entropy (a 0-d tensor), and the target count."""
        torch = self._torch
        batch = self._trim(batch)
        ids_np = np.ascontiguousarray(batch.input_ids, dtype=np.int64)
        w_np = np.asarray(batch.loss_mask, dtype=np.float32)[:, 1:]
        n_targets = batch.n_target_tokens
        rows, cols = np.nonzero(w_np)
        if rows.size == 0:  # nothing to predict: skip the model entirely
            return torch.zeros((), dtype=torch.float32, device=self.device), n_targets
        targets = torch.from_numpy(ids_np[rows, cols + 1]).to(self.device)
        weights = torch.from_numpy(w_np[rows, cols]).to(self.device)
        inputs, r, c = self._model_inputs(batch, ids_np, rows, cols)
        with self._lora_autocast():
            if self._plain_head:
                hidden = self._decoder(**inputs, use_cache=False).last_hidden_state
            else:
                logits = self.model(**inputs, use_cache=False).logits[r, c]
        if self._plain_head:
            return self._head_loss(hidden[r, c], targets, weights), n_targets
        ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        return (ce * weights).sum(), n_targets

    def _lora_autocast(self):
        """bf16/fp16 models: the LoRA matmuls in the compute dtype (torch.autocast; weights, gradients and AdamW
        stay float32), as mixed precision does it. Without it peft runs them in float32 on a float32 copy of
        each adapted layer's input, which backward keeps: half of all activation memory. Activation
        checkpointing recomputes under the same autocast state."""
        if not self._autocast:
            return contextlib.nullcontext()
        return self._torch.autocast(self.device.type, dtype=self.dtype)

    def _model_inputs(self, batch: Batch, ids_np: np.ndarray, rows: np.ndarray, cols: np.ndarray):
        """(model keyword arguments, target rows, target columns) for the attention mode
        (backends/torch_packed.py); the dense mask when a batch does not fit the mode."""
        torch, dev, attn = self._torch, self.device, self._attn
        flat = flatten(batch, rows, cols) if attn.routes("sdpa_varlen") else None
        if flat is not None and not attn.wants_dense(flat):   # every real token in one row, documents by boundaries
            cu = torch.from_numpy(flat.cu).to(dev)
            src = torch.from_numpy(flat.src).to(dev)
            n = int(flat.ids.size)
            return (dict(input_ids=torch.from_numpy(flat.ids)[None].to(dev),
                         attention_mask=torch.ones(1, n, dtype=torch.bool, device=dev),   # no padding: no mask built
                         position_ids=torch.from_numpy(flat.pos)[None].to(dev), cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                         max_length_q=flat.max_len, max_length_k=flat.max_len), torch.zeros_like(src), src)
        ids = torch.from_numpy(ids_np).to(dev)
        r, c = torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)
        if attn.routes("flex"):
            pos = torch.from_numpy(np.ascontiguousarray(batch.position_ids, dtype=np.int64)).to(dev)
            return dict(input_ids=ids, attention_mask=self._attn.block_mask(batch.segment_ids), position_ids=pos), r, c
        mask, position_ids = self._attention_inputs(batch)
        return dict(input_ids=ids, attention_mask=mask, position_ids=position_ids), r, c

    # ------------------------------------------------------------ training
    def forward_backward(self, batch: Batch, scale: float) -> tuple[float, int]:
        loss, n = self._loss(batch)
        if loss.requires_grad:
            (loss * scale).backward()
        return float(loss.detach()), n

    def optimizer_step(self, lr: float) -> StepResult:
        torch = self._torch
        self._all_reduce_grads()
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            norm = 0.0
        else:
            if all(g.dtype == torch.float32 for g in grads):
                norms = torch._foreach_norm(grads)  # one call instead of one per tensor (what clip_grad_norm_ uses)
            else:
                norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
            norm = float(torch.linalg.vector_norm(torch.stack(norms)))
        if not math.isfinite(norm):
            self.zero_grad()
            return StepResult(grad_norm=norm, applied=False)
        clip = self.optim_settings.grad_clip
        if clip is not None and grads:
            coef = clip / (norm + 1e-6)
            if coef < 1.0:
                torch._foreach_mul_(grads, coef)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.zero_grad()
        return StepResult(grad_norm=norm, applied=True)

    def _all_reduce_grads(self) -> None:
        """Data-parallel (torch.distributed initialised by the engine): sum every rank's gradients.

        Each rank accumulated its share of the step's micro-batches, scaled by 1 / the step's target
        tokens over all ranks, so the sum is exactly the one-process gradient; clipping and AdamW then
        see the same numbers on every rank and the adapters stay identical.
        """
        torch = self._torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        for p in self.params:   # a rank with no micro-batch this step still takes part
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[object, list] = {}
        for p in self.params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():   # one collective per dtype, not one per LoRA tensor
            flat = _flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            for g, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
                g.copy_(summed)

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        torch = self._torch
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                loss, n = self._loss(batch)
        finally:
            if was_training:
                self.model.train()
        if not self._flow_checked_after_eval:   # evaluation is what switches bitsandbytes' CPU layout
            from backends.torch_nf4 import check_gradient_flow

            check_gradient_flow(self.model, "after the first evaluation")
            self._flow_checked_after_eval = True
        return float(loss), n

    def generate(self, prompts: list[list[int]], settings: GenerationSettings) -> list[list[int]]:
        from backends.torch_generate import generate

        result = generate(self, prompts, settings)
        if not self._flow_checked_after_eval:   # generation runs in eval mode too: the same guard
            from backends.torch_nf4 import check_gradient_flow

            check_gradient_flow(self.model, "after generating")
            self._flow_checked_after_eval = True
        return result

    # --------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray]:
        torch = self._torch
        out: dict[str, np.ndarray] = {}
        for name, p in self.trainable:
            out[f"adapter/{name}"] = p.detach().to("cpu", copy=True).numpy()
        for i, p in enumerate(self.params):
            st = self.optimizer.state.get(p)
            if not st:
                continue
            out[f"optim/{i}/exp_avg"] = st["exp_avg"].detach().to("cpu", copy=True).numpy()
            out[f"optim/{i}/exp_avg_sq"] = st["exp_avg_sq"].detach().to("cpu", copy=True).numpy()
            step = st["step"]
            out[f"optim/{i}/step"] = (step.detach().to("cpu", copy=True).numpy() if torch.is_tensor(step)
                                      else np.asarray(step, dtype=np.float32))
        out["rng/torch_cpu"] = torch.get_rng_state().numpy().copy()
        if self.device.type == "cuda":
            out["rng/torch_cuda"] = torch.cuda.get_rng_state(self.device).numpy().copy()
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        torch = self._torch
        self.load_adapter_weights(state)
        optim = entries(state, "optim")
        # A parameter that never took a step has no optimizer state: missing entries are fine.
        check_keys("checkpoint optimizer state", (f"{i}/{e}" for i in range(len(self.params)) for e in OPTIM_ENTRIES),
                   optim, allow_missing=True)
        self.optimizer.state.clear()
        for i, p in enumerate(self.params):
            if f"{i}/exp_avg" not in optim:
                continue
            self.optimizer.state[p] = {
                "step": torch.tensor(np.asarray(optim[f"{i}/step"]), dtype=torch.float32,
                                     device=p.device if self._fused else "cpu"),
                **{e: self._to_param(check_shape(f"optim/{i}/{e}", optim[f"{i}/{e}"], p.shape), p)
                   for e in ("exp_avg", "exp_avg_sq")},
            }
        if "rng/torch_cpu" in state:
            torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["rng/torch_cpu"], dtype=np.uint8)))
        if "rng/torch_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["rng/torch_cuda"], dtype=np.uint8)),
                                     self.device)
        self.zero_grad()

    def _to_param(self, arr: np.ndarray, p):
        return self._torch.from_numpy(np.array(arr, copy=True)).to(device=p.device, dtype=p.dtype)

    def load_adapter_weights(self, state: dict[str, np.ndarray]) -> None:
        if is_canonical(state):   # a checkpoint's arrays as they are (backends/layout.py)
            state = self.from_canonical({k: v for k, v in state.items() if k.startswith("adapter/")})
        arrays = adapter_arrays(state, {n: p.shape for n, p in self.trainable})
        with self._torch.no_grad():
            for name, p in self.trainable:
                p.copy_(self._to_param(arrays[name], p))

    # ------------------------------------------------- canonical layout (backends/layout.py)
    def _canonical_names(self) -> list[str]:
        return [canonical_name(n) for n, _ in self.trainable]

    def to_canonical(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        steps = set()
        for i, ((name, _), canon) in enumerate(zip(self.trainable, self._canonical_names())):
            out[f"adapter/{canon}"] = state[f"adapter/{name}"]
            if f"optim/{i}/exp_avg" in state:
                out[f"optim/{canon}/exp_avg"] = state[f"optim/{i}/exp_avg"]
                out[f"optim/{canon}/exp_avg_sq"] = state[f"optim/{i}/exp_avg_sq"]
                steps.add(float(state[f"optim/{i}/step"]))
        if len(steps) > 1:   # every LoRA weight gets a gradient every step: never expected
            raise RuntimeError(f"AdamW step counts differ between parameters: {sorted(steps)}")
        if steps:
            out["optim/step"] = np.asarray(int(steps.pop()), dtype=np.int64)
        out.update({k: v for k, v in state.items() if k.startswith("rng/torch_")})
        return out

    def from_canonical(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        given = [k[len("adapter/"):] for k in arrays if k.startswith("adapter/")]
        if given:   # name mismatches in canonical names (the converted ones would only confuse)
            check_keys("adapter weights", self._canonical_names(), given)
        out: dict[str, np.ndarray] = {}
        for i, ((name, _), canon) in enumerate(zip(self.trainable, self._canonical_names())):
            if f"adapter/{canon}" in arrays:
                out[f"adapter/{name}"] = arrays[f"adapter/{canon}"]
            if f"optim/{canon}/exp_avg" in arrays:
                out[f"optim/{i}/exp_avg"] = arrays[f"optim/{canon}/exp_avg"]
                out[f"optim/{i}/exp_avg_sq"] = arrays[f"optim/{canon}/exp_avg_sq"]
                out[f"optim/{i}/step"] = np.asarray(arrays["optim/step"], dtype=np.float32)
        out.update({k: v for k, v in arrays.items() if k.startswith("rng/torch_")})
        return out

    def export_merged(self, path: Path) -> dict[str, object]:
        from backends.torch_merge import export_merged

        return export_merged(self, Path(path))

    def export_adapter(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path), safe_serialization=True)
        cfg_path = path / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(self.model_path)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))

    # ---------------------------------------------------------------- facts
    def memory(self) -> MemoryStats:
        torch = self._torch
        if self.model is not None and self.device.type == "cuda":
            mb = 1024 ** 2
            return MemoryStats(torch.cuda.memory_allocated(self.device) / mb,
                               torch.cuda.max_memory_allocated(self.device) / mb,
                               "torch.cuda.memory_allocated/max_memory_allocated",
                               self._gpu.sample() if self._gpu is not None else {})
        return rss_memory()

    def describe(self) -> dict[str, object]:
        return dict(self._described)
