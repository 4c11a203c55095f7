"""Packed attention without a dense mask: which kernel runs, and the inputs each one takes.

``model.attention`` (the spec) chooses; the choice and the kernel are in ``describe()["attention"]``.

* ``sdpa_varlen``: the batch's real tokens go in as one row ``[1, N]`` (padding is dropped, so no matmul
  spends work on it) and each document attends only to itself, causally, told by its boundaries
  (``cu_seq_lens``). The kernel is ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention varlen, on
  CUDA in bf16/fp16), else ``scaled_dot_product_attention(is_causal=True)`` per document, documents of
  equal length stacked into one call (CPU, float32): no ``[T, T]`` mask exists anywhere, attention costs
  the sum of the documents' squared lengths, and memory grows with N, not T².
* ``flex``: the ``[B, T]`` rows as they are, with FlexAttention and a document-causal ``BlockMask`` built
  from ``segment_ids`` (exactly the dense mask's pattern, stored by 128 × 128 block); compiled on CUDA.
  torch has no FlexAttention backward on the CPU, so there it serves evaluation only.
* ``dense``: the ``[B, 1, T, T]`` additive mask (backends/torch_attention.py), the CPU/eager fallback.
* ``auto``: sdpa_varlen where the flash varlen kernel runs (CUDA, bf16/fp16) and on the CPU, dense
  otherwise (CUDA float32). On the CPU, auto takes the dense mask for a batch whose documents average
  under SHORT_DOCUMENTS tokens: there one masked call beats many small ones (measured, bench/README.md).

The kernels replace only the attention product of models whose attention is plain scaled dot-product
(SUPPORTED_MODEL_TYPES loaded with sdpa, no sliding window, no attention dropout); any other model keeps
dense, and asking for another mode there is an error, never a silently different model. The model's
attention implementation becomes ``specc_varlen`` / ``specc_flex`` for good (so activation checkpointing
recomputes a layer with the very kernel and inputs of its forward pass); registered with sdpa's mask
function, a call that carries no document boundaries (an NF4 probe, generation with padding or a cache)
gets exactly sdpa, mask and all. The backend's own calls pass a 2-D all-ones padding mask, so
transformers builds no mask for them (none is needed, and it would not infer packing from positions).
Tests: tests/backends/test_torch_packed.py checks loss and gradients against the dense path.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from backends.protocol import Batch
from specc.errors import UserError

MODES = ("auto", "sdpa_varlen", "flex", "dense")
SHORT_DOCUMENTS = 64     # CPU auto: mean tokens per document under which a batch takes the dense mask
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3", "starcoder2", "gemma",
                                   "smollm3"})
VARLEN_NAME, FLEX_NAME = "specc_varlen", "specc_flex"


@dataclass(frozen=True)
class Flat:
    """A batch's real tokens in one row: ids, positions, document boundaries, and where each target's
    source token (the hidden state that predicts it) lies in the row."""
    ids: np.ndarray        # [N] int64
    pos: np.ndarray        # [N] int64, restarting per document
    cu: np.ndarray         # [D + 1] int32: document d is cu[d]:cu[d + 1]
    max_len: int
    src: np.ndarray        # [n_targets] index into the row


def flatten(batch: Batch, rows: np.ndarray, cols: np.ndarray) -> Flat | None:
    """The padding-free layout of `batch` (targets at (rows, cols + 1), predicted from (rows, cols)), or None
    when a target would be predicted from padding or a segment is not contiguous (then dense is used)."""
    seg = np.asarray(batch.segment_ids)
    keep = seg > 0
    if not keep[rows, cols].all():
        return None
    B = seg.shape[0]
    index = (np.cumsum(keep.ravel()) - 1).reshape(keep.shape)
    doc = (np.arange(B, dtype=np.int64)[:, None] * (int(seg.max(initial=0)) + 1) + seg)[keep]
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]]) if doc.size else np.zeros(0, np.int64)
    if np.unique(doc).size != starts.size:
        return None
    cu = np.r_[starts, doc.size].astype(np.int32)
    return Flat(np.asarray(batch.input_ids)[keep].astype(np.int64), np.asarray(batch.position_ids)[keep].astype(np.int64),
                cu, int(np.diff(cu).max(initial=0)), index[rows, cols])


def unsupported(config, attn_implementation: str) -> str | None:
    """Why this model must keep the dense mask (its attention is more than plain SDPA), or None."""
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return f"model type {kind!r} is not one whose attention is plain scaled dot-product"
    if attn_implementation != "sdpa":
        return f"it loaded with attention implementation {attn_implementation!r}, not sdpa"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) is not False:
        return f"it uses sliding-window attention ({window})"
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return "it has attention dropout"
    return None


def _varlen_kernel(torch):
    """torch's FlashAttention varlen entry point and its keyword arguments, or None where it is absent."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, set(inspect.signature(varlen_attn).parameters)


class AttentionMode:
    """The attention chosen at setup, and the switch that routes the backend's own forward to it."""

    def __init__(self, torch, requested: str, device, dtype, config, attn_implementation: str, training: bool):
        if requested not in MODES:
            raise UserError(f"unknown attention {requested!r}", hint="use " + ", ".join(MODES), where="model.attention")
        self._torch, self.device, self.config = torch, device, config
        self.loaded = attn_implementation
        why_not = unsupported(config, attn_implementation)
        flash = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and _varlen_kernel(torch) is not None
        if requested == "auto":
            self.mode = "sdpa_varlen" if (flash or device.type == "cpu") and why_not is None else "dense"
        elif requested != "dense" and why_not:
            raise UserError(f"model.attention {requested} cannot run this model: {why_not}",
                            hint="use attention: dense (or auto)", where="model.attention")
        elif requested == "flex" and device.type == "cpu" and training:
            raise UserError("model.attention flex cannot train on the CPU: torch has no FlexAttention backward there",
                            hint="use attention: sdpa_varlen or dense on the CPU (flex is for CUDA)", where="model.attention")
        else:
            self.mode = requested
        self.requested = requested
        self.flash = flash and self.mode == "sdpa_varlen"
        self.short_dense = requested == "auto" and device.type == "cpu" and self.mode == "sdpa_varlen"
        self.use(self.mode)

    def routes(self, mode: str) -> bool:
        """Does the model's attention still go through `mode`'s kernel (nobody switched its implementation)?"""
        return self.mode == mode and self.config._attn_implementation == {"sdpa_varlen": VARLEN_NAME,
                                                                          "flex": FLEX_NAME}.get(mode)

    def wants_dense(self, flat: Flat) -> bool:
        """CPU auto: many short documents run faster as one masked call than one call per length."""
        return self.short_dense and flat.ids.size < SHORT_DOCUMENTS * (flat.cu.size - 1)

    def use(self, mode: str) -> None:
        """Route the model's attention to `mode`'s kernel (set once at setup; tests switch it)."""
        self.mode = mode
        if mode != "dense":
            register(self._torch)
        self.config._attn_implementation = {"dense": self.loaded, "sdpa_varlen": VARLEN_NAME, "flex": FLEX_NAME}[mode]

    def describe(self) -> dict[str, object]:
        kernel = {"dense": f"{self.loaded} with a [B, 1, T, T] additive mask",
                  "flex": "FlexAttention, document-causal BlockMask" + (" (compiled)" if self.device.type == "cuda" else
                                                                        " (eager: forward only on the CPU)"),
                  "sdpa_varlen": "torch.nn.attention.varlen.varlen_attn (FlashAttention varlen)" if self.flash
                  else "scaled_dot_product_attention per document (is_causal)"
                  + (f"; the dense mask for batches of documents under {SHORT_DOCUMENTS} tokens on average"
                     if self.short_dense else "")}[self.mode]
        return {"requested": self.requested, "mode": self.mode, "kernel": kernel,
                "layout": "padding-free [1, N]" if self.mode == "sdpa_varlen" else "[B, T] rows"}

    def block_mask(self, seg: np.ndarray):
        """The document-causal BlockMask of [B, T] segment ids (padding, segment 0, sees only earlier padding)."""
        torch = self._torch
        from torch.nn.attention.flex_attention import create_block_mask

        s = torch.from_numpy(np.ascontiguousarray(seg, dtype=np.int32)).to(self.device)
        B, T = seg.shape

        def document_causal(b, h, q, kv):
            return (s[b, q] == s[b, kv]) & (q >= kv)

        return create_block_mask(document_causal, B, None, T, T, device=self.device)


_registered = False


def register(torch) -> None:
    """Add the two kernels to transformers' attention registry, with sdpa's mask function (once per process)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    global _flex_compiled
    from torch.nn.attention.flex_attention import flex_attention

    # varlen stays outside torch.compile's graphs (model.compile compiles the layers around it): the
    # per-document loop and the host-side boundaries would recompile for every batch. FlexAttention is
    # the opposite: eager, it materialises every score, so it is compiled (and inlined in compiled layers).
    _flex_compiled = torch.compile(flex_attention)
    AttentionInterface.register(VARLEN_NAME, torch.compiler.disable(_varlen_forward))
    AttentionInterface.register(FLEX_NAME, _flex_forward)
    for name in (VARLEN_NAME, FLEX_NAME):
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    _registered = True


def _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs):
    """transformers' own sdpa attention: what a call without document boundaries gets."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def _varlen_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                    max_length_q=None, **kwargs):
    """[1, H, N, D] query (and GQA key/value) → [1, N, H, D]: causal attention within each document."""
    import torch

    if cu_seq_lens_q is None:   # not the backend's own call: plain sdpa with transformers' mask
        return _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    hq, hk, d = query.shape[1], key.shape[1], query.shape[-1]
    scale = scaling if scaling is not None else d ** -0.5
    kernel = _varlen_kernel(torch) if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) else None
    if kernel is not None:
        fn, params = kernel
        q, k, v = (t.transpose(1, 2).squeeze(0) for t in (query, key, value))   # [N, H, D]
        kw: dict = {}
        if "window_size" in params:
            kw["window_size"] = (-1, 0)
        else:
            kw["is_causal"] = True
        if hq != hk:
            if "enable_gqa" in params:
                kw["enable_gqa"] = True
            else:
                k, v = (t.repeat_interleave(hq // hk, dim=1) for t in (k, v))
        if "scale" in params:
            kw["scale"] = scale
        elif abs(scale - d ** -0.5) > 1e-12 * scale:
            kernel = None
        if kernel is not None:
            out = fn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seq_lens_q, cu_seq_lens_q, int(max_length_q),
                     int(max_length_q), **kw)
            return out.unsqueeze(0), None
    return _per_document(torch, module, query, key, value, cu_seq_lens_q.tolist(), scale, dropout), None


def _per_document(torch, module, query, key, value, bounds: list[int], scale: float, dropout: float):
    """Causal SDPA within each document, documents of one length stacked into one call: [1, H, N, D] → [1, N, H, D]."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = {"enable_gqa": True} if query.shape[1] != key.shape[1] else {}
    p = dropout if module.training else 0.0
    starts, lengths = np.asarray(bounds[:-1]), np.diff(bounds)
    if len(set(lengths.tolist())) == len(lengths):   # all lengths differ: slices, no gathering
        outs = [sdpa(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scale, dropout_p=p, **gqa)
                for a, b in zip(bounds, bounds[1:])]
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous()
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])   # [1, N, H, D]
    for n in np.unique(lengths):
        index = torch.from_numpy((starts[lengths == n][:, None] + np.arange(n)).reshape(-1)).to(query.device)
        q, k, v = (t[0].index_select(1, index).unflatten(1, (-1, int(n))).transpose(0, 1)   # [docs, H, n, D]
                   for t in (query, key, value))
        o = sdpa(q, k, v, is_causal=True, scale=scale, dropout_p=p, **gqa)
        out = out.index_copy(1, index, o.transpose(1, 2).flatten(0, 1)[None])
    return out


_flex_compiled = None


def _flex_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """[B, H, T, D] with a BlockMask (transformers passes a 4-D mask through untouched) → [B, T, H, D]."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if not isinstance(attention_mask, BlockMask):   # not the backend's own call: plain sdpa
        return _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    fn = _flex_compiled if query.is_cuda else flex_attention   # the CPU: eager (forward only) for evaluation
    out = fn(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None
