"""How the MLX backend lays a batch out for the model: re-packed rows, and the positions the LM head sees.

Throughput (uncompiled path): masked attention costs T x T per row however the segments fall, so
each batch is re-laid out first (`relayout`): padding rows/columns dropped and, when the modelled
cost drops by >10%, the documents re-packed first-fit-decreasing into shorter rows. That is exact
(block-diagonal attention + relative RoPE) and deterministic. Only target positions go through the
LM head. On Linux, note that the mlx[cpu] wheel links the reference (netlib) BLAS: its sgemm runs
~10x slower than numpy's OpenBLAS on the same machine, and mlx-lm pays the same price.
"""
from __future__ import annotations

import numpy as np

from backends.protocol import Batch


def arch_costs(args) -> dict[str, int]:
    """The per-token sizes `token_cost` needs, from an mlx-lm model's args."""
    n_heads = int(args.num_attention_heads)
    n_kv = int(getattr(args, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(args, "head_dim", None) or args.hidden_size // n_heads)
    hidden, inter = int(args.hidden_size), int(args.intermediate_size)
    return {"linear": hidden * head_dim * (2 * n_heads + 2 * n_kv) + 3 * hidden * inter,
            "attn_width": n_heads * head_dim}


def token_cost(arch: dict[str, int], width: int) -> float:
    """Relative forward cost of one token in a row of `width` tokens: the blocks' linear layers
    plus masked T x T attention (scores and weighted sum over all `width` keys)."""
    return arch["linear"] + 2.0 * width * arch["attn_width"]


def model_inputs(batch: Batch, *, fixed_shape: bool, repack: bool, cost) -> tuple[np.ndarray, ...]:
    """(ids, segment_ids, sel, targets, weights) as numpy: the model inputs plus the flat positions
    b*T + t whose next token is a target, that target, and its loss weight.

    Free shapes (uncompiled, the CPU default), two exact savings:
    - the rows are re-laid out (`relayout`, when `repack`): padding dropped and, when that is cheaper,
      the documents re-packed into shorter rows, because masked attention costs T x T per row whatever
      the segments are;
    - only target positions go through the LM head (prompts and padding never do: for a real
      vocabulary the head is a large share of the step).
    Fixed shapes (compiled: one trace per [B, T]): the batch is used as given and every position
    b*T + t, t < T-1, is taken and weighted.
    """
    ids = np.asarray(batch.input_ids, dtype=np.int32)
    lm = np.asarray(batch.loss_mask, dtype=np.float32)
    seg = np.asarray(batch.segment_ids, dtype=np.int32)
    if ids.ndim != 2 or ids.shape[1] < 2 or lm.shape != ids.shape or seg.shape != ids.shape:
        raise ValueError(f"batch arrays must share a [B, T>=2] shape, got {ids.shape}, {lm.shape}, {seg.shape}")
    if not fixed_shape and repack:
        ids, lm, seg = relayout(ids, lm, seg, cost)
    B, T = ids.shape
    if fixed_shape:
        b, t = np.divmod(np.arange(B * (T - 1)), T - 1)
    else:
        b, t = np.nonzero(lm[:, 1:])
        if b.size == 0:  # no targets: one weight-0 position keeps every op non-empty
            b, t = np.zeros(1, np.int64), np.zeros(1, np.int64)
    return ids, seg, (b * T + t).astype(np.int32), ids[b, t + 1], lm[b, t + 1]


def _runs(seg_row: np.ndarray) -> list[tuple[int, int]] | None:
    """(start, end) of each segment (> 0) in a row; None if a segment id is not one contiguous run."""
    change = np.flatnonzero(np.diff(seg_row)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [seg_row.size]])
    runs, seen = [], set()
    for a, b in zip(starts.tolist(), ends.tolist()):
        k = int(seg_row[a])
        if k == 0:
            continue
        if k in seen:
            return None
        seen.add(k)
        runs.append((a, b))
    return runs


def _ffd(order: list[int], lengths: np.ndarray, width: int) -> list[list[int]]:
    """First-fit decreasing: documents (indices, longest first) into bins of `width` tokens."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        for j, free in enumerate(room):
            if n <= free:
                bins[j].append(i)
                room[j] -= n
                break
        else:
            bins.append([i])
            room.append(width - n)
    return bins


def relayout(ids: np.ndarray, lm: np.ndarray, seg: np.ndarray, token_cost) -> tuple[np.ndarray, ...]:
    """Lay the batch's documents out as cheaply as possible, exactly.

    Attention is block-diagonal over segments and every document's first token is never a target, so
    a document's logits and loss depend only on its own tokens (RoPE is relative: where it sits in a
    row changes nothing but float rounding). That frees us to
    1. drop all-padding rows and trailing all-padding columns, and
    2. re-pack the documents (first-fit decreasing) into shorter rows when the modelled cost
       rows * width * token_cost(width) -- linear layers plus width x width masked attention -- drops by
       more than 10%. Packed rows of 512-2048 tokens holding 60-token documents otherwise spend most
       of the step on attention between documents that the mask then throws away.
    The result depends only on the batch, so it is deterministic (dropout and resume included).
    """
    real = seg > 0
    rows = np.flatnonzero(real.any(axis=1))
    if rows.size == 0:
        return ids, lm, seg
    last = max(int(np.flatnonzero(real[rows].any(axis=0))[-1]) + 1, 2)
    ids, lm, seg = ids[rows, :last], lm[rows, :last], seg[rows, :last]
    B, T = ids.shape

    docs = []  # (row, start, end)
    for r in range(B):
        runs = _runs(seg[r])
        # a target at a segment start would be predicted from the previous document: keep the layout
        if runs is None or any(lm[r, a] != 0 for a, _ in runs):
            return ids, lm, seg
        docs.extend((r, a, b) for a, b in runs)
    lengths = np.array([b - a for _, a, b in docs])
    longest = int(lengths.max())
    order = sorted(range(len(docs)), key=lambda i: (-lengths[i], i))

    best_cost = B * T * token_cost(T)
    best = None
    base = -(-longest // 8) * 8
    for width in sorted({min(base * m, T) for m in (1, 2, 3, 4)} | {max(longest, 2)}):
        if width >= T:
            continue
        bins = _ffd(order, lengths, width)
        cost = len(bins) * width * token_cost(width)
        if cost < 0.9 * best_cost and (best is None or cost < best[0]):
            best = (cost, width, bins)
    if best is None:
        return ids, lm, seg
    _, width, bins = best
    new_ids = np.zeros((len(bins), width), ids.dtype)
    new_lm = np.zeros((len(bins), width), lm.dtype)
    new_seg = np.zeros((len(bins), width), seg.dtype)
    for r, members in enumerate(bins):
        col = 0
        for k, i in enumerate(sorted(members), start=1):
            src, a, b = docs[i]
            n = b - a
            new_ids[r, col:col + n] = ids[src, a:b]
            new_lm[r, col:col + n] = lm[src, a:b]
            new_seg[r, col:col + n] = k
            col += n
    return new_ids, new_lm, new_seg
