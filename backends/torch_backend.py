"""PyTorch backend: Hugging Face transformers model + PEFT LoRA (+ bitsandbytes NF4 for QLoRA).

The backend owns only the model (see backends/protocol.py): it loads a local HF directory, adds
LoRA adapters with peft, runs forward/backward on batches the engine built, applies AdamW and moves
its trainable state to and from numpy. LoRA is peft's and quantization is bitsandbytes'; nothing
here re-implements either.

Choices worth knowing:

* Attention. Packed rows must not attend across documents, so the backend builds the 4-D additive
  mask itself from ``segment_ids`` (``[B, 1, T, T]``, 0 = allowed, dtype-min = masked, in the
  model's dtype) and passes ``position_ids``. transformers 5.x (``masking_utils``) hands an explicit
  4-D mask to sdpa/eager untouched; with a 2-D mask or none it would instead *infer* packing from
  position_ids, which we do not want to depend on. Padding (segment 0) attends only to padding, so
  no row is ever fully masked (no NaN from softmax) and real tokens never see padding. Rows that
  hold one document followed by padding need no mask at all: plain causal attention already
  excludes the (later) padding, so then the mask is skipped and sdpa runs its ``is_causal`` kernel.
* Loss. The decoder runs once; the LM head and a float32 cross-entropy run only on hidden states
  at target positions (loss_mask[:, 1:] != 0), not on the full [B, T, vocab] logits. For model
  types whose head is not a plain linear layer (soft-capping, logit scaling) the full forward is
  used instead.
* QLoRA. ``prepare_model_for_kbit_training`` is deliberately not called: it upcasts every
  non-quantized weight (embeddings and LM head included) to float32 and turns on gradient
  checkpointing behind the spec's back. Here the base is frozen by peft, LoRA weights are float32
  (peft's ``autocast_adapter_dtype``), and gradient checkpointing follows
  ``ModelSettings.gradient_checkpointing`` (non-reentrant, so no input-grad hook is needed).
* Trailing columns that are padding in every row are cut before the model runs (causal attention:
  nothing real depends on them), so a batch padded to a fixed length costs only its longest row.
* Optimizer. torch.optim.AdamW with the fused kernel (CPU and CUDA): an update depends only on
  (param, grad, state), so resuming from ``state()`` is bit-exact, and it is much faster than the
  per-tensor loop for the hundreds of small LoRA tensors of a real model.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import warnings
from pathlib import Path

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
from specc.model_check import check_model_dir, listing as _listing

# Model types whose logits are exactly lm_head(final hidden state): the gathered-head path is exact.
PLAIN_HEAD_MODEL_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo", "olmo2", "starcoder2", "gemma",
})
MASK_CACHE_BYTES = 256 * 1024 ** 2
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def validate_model_dir(path: Path) -> Path:
    """Check that `path` is a usable local HF model directory (see specc.model_check)."""
    check_model_dir(path)
    return Path(path).expanduser().resolve()


class TorchBackend:
    name = "torch"

    def __init__(self) -> None:
        self.model = None
        self._mask_cache: dict[tuple, object] = {}
        self._described: dict[str, object] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, model: ModelSettings, lora: LoraSettings | None, optim: OptimizerSettings, seed: int) -> None:
        path = validate_model_dir(model.path)
        import torch
        import transformers

        self._torch = torch
        self.optim_settings = optim
        device = self._resolve_device(model.device)
        if device.type == "cpu":
            self._clamp_threads()
        dtype = self._resolve_dtype(model.dtype, device)
        self.device, self.dtype = device, dtype

        quant = (model.quantization or "none").lower()
        kwargs: dict[str, object] = dict(local_files_only=True, dtype=dtype)
        bnb_details: dict[str, object] | None = None
        if quant == "nf4":
            try:
                import bitsandbytes  # noqa: F401
            except Exception as exc:  # ImportError or a broken native library
                raise UserError(f"quantization: nf4 needs bitsandbytes, which failed to import: {exc}",
                                hint="pip install 'specc[torch]' or set model.quantization: none") from exc
            bnb_details = dict(quant_type="nf4", compute_dtype=str(dtype).removeprefix("torch."),
                               double_quant=True, quant_storage="uint8",
                               bitsandbytes=getattr(bitsandbytes, "__version__", "?"))
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True)
            # bitsandbytes quantizes while the weights move to their device; place them directly.
            kwargs["device_map"] = {"": self._device_map_target(device)}
        elif quant == "none":
            if device.type == "cuda":  # load straight onto the GPU instead of staging in host memory
                kwargs["device_map"] = {"": self._device_map_target(device)}
        else:
            raise UserError(f"unknown quantization {model.quantization!r}", hint="use 'nf4' or 'none'")

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
                raise UserError(f"could not load the model: {exc}", where=str(path),
                                hint=f"the directory holds: {_listing(path)}") from exc
            except Exception as exc:  # corrupt weights, unknown architecture, bad config values, ...
                raise UserError(f"could not load the model: {type(exc).__name__}: {exc}", where=str(path),
                                hint=f"the directory holds: {_listing(path)}") from exc
        if "device_map" not in kwargs:
            base.to(device)
        base.config.use_cache = False
        self.attn_implementation = base.config._attn_implementation

        n_layers = int(getattr(base.config, "num_hidden_layers", 0) or 0)
        layers_to_transform = None
        if lora is None:   # a control run: the base model alone, evaluated; nothing trains
            self.model = base.requires_grad_(False)
        else:
            if lora.layers is not None:
                if not 1 <= lora.layers <= n_layers:
                    raise UserError(f"lora.layers={lora.layers} but the model has {n_layers} transformer blocks",
                                    hint=f"use 1..{n_layers}, or leave it unset for all blocks")
                layers_to_transform = list(range(n_layers - lora.layers, n_layers))
            self.model = self._with_lora(base, lora, layers_to_transform, seed)
        if model.gradient_checkpointing:
            hf = self._hf()
            if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5 name
                hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
        # The fused kernel (CPU and CUDA) is several times faster than the per-tensor loop for the
        # hundreds of small LoRA tensors of a real model, and like it, each update depends only on
        # (param, grad, state): resuming from state() stays bit-exact (tested).
        self._fused = all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in self.params)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=0.0, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay,
            **({"fused": True} if self._fused else {"foreach": False})) if self.params else None

        hf = self._hf()
        self._plain_head = (getattr(hf.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
                            and not any(getattr(hf.config, a, None) not in (None, 1, 1.0) for a in
                                        ("final_logit_softcapping", "logit_scale", "logits_scaling"))
                            and hasattr(hf, "get_decoder") and hf.get_output_embeddings() is not None)
        self._decoder = hf.get_decoder() if self._plain_head else None
        self._head = hf.get_output_embeddings() if self._plain_head else None
        self._mask_dtype = hf.get_input_embeddings().weight.dtype
        self._mask_cache.clear()

        total = sum(p.numel() for p in self.model.parameters())
        if quant == "nf4":
            # Params4bit stores two 4-bit values per uint8 element: count logical weights.
            total = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in self.model.parameters())
        self._described = {
            "backend": self.name,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "quantization": quant,
            "quantization_details": bnb_details,
            "params_total": int(total),
            "params_trainable": int(sum(p.numel() for p in self.params)),
            "trainable_tensors": len(self.params),
            "attn_implementation": self.attn_implementation,
            "gradient_checkpointing": bool(model.gradient_checkpointing),
            "lora_layers": "none (base model only)" if lora is None else
                           layers_to_transform if layers_to_transform is not None else f"all {n_layers}",
            "loss_head": "gathered targets" if self._plain_head else "full logits",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "optimizer": "torch.optim.AdamW (" + ("fused" if self._fused else "single-tensor") + ")",
            "model_path": str(path),
        }
        self.model_path = path

    def _with_lora(self, base, lora: LoraSettings, layers_to_transform, seed: int):
        """peft's LoRA on the base, A initialised from `seed` alone (B starts at zero: the base model exactly)."""
        torch = self._torch
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

    def _hf(self):
        """The transformers model under peft's wrapper (or the model itself, without LoRA)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _device_map_target(self, device):
        if device.type == "cuda":
            return device.index if device.index is not None else self._torch.cuda.current_device()
        return "cpu"

    def _clamp_threads(self) -> None:
        """Never run more intra-op threads than CPUs this process may use (a SLURM allocation or
        taskset): oversubscribed OpenMP threads spin against each other. Fewer is left alone."""
        torch = self._torch
        try:
            allowed = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            allowed = os.cpu_count() or 1
        if torch.get_num_threads() > allowed:
            torch.set_num_threads(allowed)

    def _resolve_device(self, device: str):
        torch = self._torch
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

    def _resolve_dtype(self, dtype: str, device):
        torch = self._torch
        dtype = (dtype or "auto").lower()
        if dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}", hint="use auto, float32 or bfloat16")
        return getattr(torch, DTYPES[dtype])

    # ------------------------------------------------------------- batches
    def _attention_inputs(self, batch: Batch):
        """(attention_mask or None, position_ids or None) for the model call."""
        torch = self._torch
        seg = np.asarray(batch.segment_ids)
        pos = np.asarray(batch.position_ids)
        B, T = seg.shape
        # One document per row, padding only after it, positions 0..n-1: plain causal attention is
        # exact (real tokens only look back, padding comes later) and sdpa can use is_causal.
        if seg.max(initial=0) <= 1 and (T < 2 or not (np.diff(seg, axis=1) > 0).any()):
            real = seg > 0
            if np.array_equal(pos[real], np.broadcast_to(np.arange(T), (B, T))[real]):
                return None, None
        key = (seg.shape, seg.dtype.str, seg.tobytes())
        mask = self._mask_cache.get(key)
        if mask is None:
            s = torch.from_numpy(np.ascontiguousarray(seg)).to(self.device)
            same = s[:, :, None] == s[:, None, :]
            causal = torch.ones(T, T, dtype=torch.bool, device=self.device).tril_()
            allowed = (same & causal).unsqueeze(1)
            mask = torch.zeros(allowed.shape, dtype=self._mask_dtype, device=self.device)
            mask.masked_fill_(~allowed, torch.finfo(self._mask_dtype).min)
            self._mask_cache[key] = mask
            # Keep a few recent layouts (eval batches repeat; fixed packing patterns repeat), but never
            # more than MASK_CACHE_BYTES of masks beyond the one in use: [B, 1, T, T] grows fast with T.
            while len(self._mask_cache) > 1 and (
                    len(self._mask_cache) > 8
                    or sum(m.numel() * m.element_size() for m in self._mask_cache.values()) > MASK_CACHE_BYTES):
                self._mask_cache.pop(next(iter(self._mask_cache)))
        return mask, torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int64)).to(self.device)

    @staticmethod
    def _trim(batch: Batch) -> Batch:
        """Drop trailing columns that are padding in every row. Attention is causal, so no real token
        depends on them: the result is identical and the model does less work."""
        seg = np.asarray(batch.segment_ids)
        used = (seg > 0).any(axis=0) | (np.asarray(batch.loss_mask) != 0).any(axis=0)
        T = seg.shape[1]
        width = T - int(np.argmax(used[::-1])) if used.any() else 1
        if width >= T:
            return batch
        return Batch(input_ids=batch.input_ids[:, :width], loss_mask=batch.loss_mask[:, :width],
                     segment_ids=seg[:, :width], position_ids=batch.position_ids[:, :width])

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
        ids = torch.from_numpy(ids_np).to(self.device)
        mask, position_ids = self._attention_inputs(batch)
        targets = torch.from_numpy(ids_np[rows, cols + 1]).to(self.device)
        weights = torch.from_numpy(w_np[rows, cols]).to(self.device)
        r = torch.from_numpy(rows).to(self.device)
        c = torch.from_numpy(cols).to(self.device)
        if self._plain_head:
            hidden = self._decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                                   use_cache=False).last_hidden_state
            logits = self._head(hidden[r, c])
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                                use_cache=False).logits[r, c]
        ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        return (ce * weights).sum(), n_targets

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
        self.optimizer.state.clear()
        for i, p in enumerate(self.params):
            if f"optim/{i}/exp_avg" not in state:
                continue
            self.optimizer.state[p] = {
                "step": torch.tensor(np.asarray(state[f"optim/{i}/step"]), dtype=torch.float32,
                                     device=p.device if self._fused else "cpu"),
                "exp_avg": self._to_param(state[f"optim/{i}/exp_avg"], p, f"optim/{i}/exp_avg"),
                "exp_avg_sq": self._to_param(state[f"optim/{i}/exp_avg_sq"], p, f"optim/{i}/exp_avg_sq"),
            }
        extra = [k for k in state if k.startswith("optim/")
                 and not (k.split("/")[1].isdigit() and int(k.split("/")[1]) < len(self.params))]
        if extra:
            raise UserError(f"checkpoint has optimizer state for {len(extra)} unknown parameters (e.g. {extra[0]})",
                            hint="the checkpoint was made with different LoRA settings")
        if "rng/torch_cpu" in state:
            torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["rng/torch_cpu"], dtype=np.uint8)))
        if "rng/torch_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["rng/torch_cuda"], dtype=np.uint8)),
                                     self.device)
        self.zero_grad()

    def _to_param(self, arr: np.ndarray, p, key: str):
        torch = self._torch
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(p.shape):
            raise UserError(f"checkpoint entry {key} has shape {tuple(arr.shape)}, the model expects {tuple(p.shape)}",
                            hint="the checkpoint was made with different LoRA settings (rank, target modules, layers)")
        return torch.from_numpy(np.array(arr, copy=True)).to(device=p.device, dtype=p.dtype)

    def load_adapter_weights(self, state: dict[str, np.ndarray]) -> None:
        torch = self._torch
        names = {n for n, _ in self.trainable}
        given = {k[len("adapter/"):] for k in state if k.startswith("adapter/")}
        missing, unknown = sorted(names - given), sorted(given - names)
        if missing or unknown:
            detail = (f"missing {len(missing)} (e.g. {missing[0]})" if missing else "") + \
                     ("; " if missing and unknown else "") + \
                     (f"{len(unknown)} unknown (e.g. {unknown[0]})" if unknown else "")
            raise UserError(f"adapter weights do not match this model's LoRA parameters: {detail}",
                            hint="the checkpoint was made with different LoRA settings (rank, target modules, layers)")
        with torch.no_grad():
            for name, p in self.trainable:
                p.copy_(self._to_param(state[f"adapter/{name}"], p, f"adapter/{name}"))

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
                               "torch.cuda.memory_allocated/max_memory_allocated")
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = peak_kb / 1024 ** 2 if sys.platform == "darwin" else peak_kb / 1024  # bytes on macOS
        current_mb = peak_mb
        try:
            with open("/proc/self/statm") as fh:
                current_mb = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 2
        except (OSError, ValueError, IndexError):
            pass
        return MemoryStats(current_mb, max(peak_mb, current_mb), "rss")

    def describe(self) -> dict[str, object]:
        return dict(self._described)
