"""What the torch backend hands the model with a batch: the attention mask, positions, trimmed width.

* Attention. Packed rows must not attend across documents, so the backend builds the 4-D additive
  mask itself from ``segment_ids`` (``[B, 1, T, T]``, 0 = allowed, dtype-min = masked, in the
  model's dtype) and passes ``position_ids``. transformers 5.x (``masking_utils``) hands an explicit
  4-D mask to sdpa/eager untouched; with a 2-D mask or none it would instead *infer* packing from
  position_ids, which we do not want to depend on. Padding (segment 0) attends only to padding, so
  no row is ever fully masked (no NaN from softmax) and real tokens never see padding. Rows that
  hold one document followed by padding need no mask at all: plain causal attention already
  excludes the (later) padding, so then the mask is skipped and sdpa runs its ``is_causal`` kernel.
* Trailing columns that are padding in every row are cut before the model runs (causal attention:
  nothing real depends on them), so a batch padded to a fixed length costs only its longest row.
"""
from __future__ import annotations

import numpy as np

from backends.protocol import Batch

MASK_CACHE_BYTES = 256 * 1024 ** 2


class AttentionInputs:
    """(attention_mask or None, position_ids or None) for a batch, on `device`; recent masks are kept."""

    def __init__(self, torch, device, mask_dtype) -> None:
        self._torch, self.device, self.mask_dtype = torch, device, mask_dtype
        self._cache: dict[tuple, object] = {}

    def __call__(self, batch: Batch):
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
        mask = self._cache.get(key)
        if mask is None:
            mask = self._cache[key] = self._mask(seg)
            # Keep a few recent layouts (eval batches repeat; fixed packing patterns repeat), but never
            # more than MASK_CACHE_BYTES of masks beyond the one in use: [B, 1, T, T] grows fast with T.
            while len(self._cache) > 1 and (
                    len(self._cache) > 8
                    or sum(m.numel() * m.element_size() for m in self._cache.values()) > MASK_CACHE_BYTES):
                self._cache.pop(next(iter(self._cache)))
        return mask, torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int64)).to(self.device)

    def _mask(self, seg: np.ndarray):
        """[B, 1, T, T] additive: 0 where causal and same segment, the dtype's minimum elsewhere."""
        torch = self._torch
        T = seg.shape[1]
        s = torch.from_numpy(np.ascontiguousarray(seg)).to(self.device)
        same = s[:, :, None] == s[:, None, :]
        causal = torch.ones(T, T, dtype=torch.bool, device=self.device).tril_()
        allowed = (same & causal).unsqueeze(1)
        mask = torch.zeros(allowed.shape, dtype=self.mask_dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.mask_dtype).min)
        return mask


def trim(batch: Batch) -> Batch:
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
