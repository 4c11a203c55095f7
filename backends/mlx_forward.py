"""The MLX model pass and the step functions: our mask through the model's own modules, the loss on
target positions, value_and_grad and the AdamW update (compiled on the GPU).

- Attention: mlx-lm models build a plain causal mask internally. We run the model's own pieces
  (embed_tokens, each block with *our* mask, norm, lm_head / tied embeddings) with a boolean
  [B, 1, T, T] mask = causal AND same-segment, so packed documents never see each other and no real
  token attends to padding (padding rows attend only to padding, which keeps them finite).
  Positions: mlx-lm applies RoPE with a per-row offset only (mx.fast.rope takes a scalar or per-batch
  offset, not per-token positions), so tokens keep their position in the packed row. RoPE is
  relative -- q.k depends only on the distance between two tokens -- so with the block-diagonal mask a
  document's logits equal those of the same document alone (checked to ~1e-5 in the tests).
  RoPE variants whose frequencies depend on absolute length (longrope/su) are the exception.
- Training step: `nn.value_and_grad` over the trainable (LoRA) parameters, gradients accumulated
  across micro-batches by the backend (tree_map add); the update is
  `mlx.optimizers.AdamW(bias_correction=True)`, which applies `p *= 1 - lr*wd` before the
  bias-corrected Adam step -- torch's decoupled AdamW. On the GPU the forward/backward and the update
  are `mx.compile`d; on the CPU they are not, because MLX's CPU compile JIT-builds C++ kernels (~25 s
  per new batch shape here) and was slower per step for small models. SPECC_MLX_COMPILE=1/0 forces it
  either way.
"""
from __future__ import annotations

from functools import partial


class Forward:
    """The model's own modules (embed_tokens, blocks, norm, head) called with the block-diagonal mask."""

    def __init__(self, model, grad_checkpoint: bool) -> None:
        self.model = model
        self.tied = bool(getattr(model.args, "tie_word_embeddings", False)) or not hasattr(model, "lm_head")
        self.sliding_window = getattr(model.model, "sliding_window", None)
        self.grad_checkpoint = grad_checkpoint

    def mask(self, segment_ids):
        """[B, 1, T, T] bool: causal AND same segment (padding, segment 0, only sees padding)."""
        import mlx.core as mx

        T = segment_ids.shape[1]
        idx = mx.arange(T)
        causal = idx[:, None] >= idx[None, :]
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        full = mx.logical_and(causal[None], same)
        window = None
        if self.sliding_window and any(getattr(l, "use_sliding", False) for l in self.model.model.layers):
            window = mx.logical_and(full, (idx[:, None] - idx[None, :] < self.sliding_window)[None])
            window = window[:, None]
        return full[:, None], window

    def hidden(self, input_ids, segment_ids):
        """Final normed hidden states [B, T, D]: the model's own modules, called with our mask."""
        inner = self.model.model
        mask, window_mask = self.mask(segment_ids)
        h = inner.embed_tokens(input_ids)
        for layer in inner.layers:
            m = window_mask if (window_mask is not None and getattr(layer, "use_sliding", False)) else mask
            if self.grad_checkpoint:
                h = _checkpointed(layer, h, m)
            else:
                h = layer(h, m, cache=None)
        return inner.norm(h)

    def head(self, h):
        if self.tied:
            return self.model.model.embed_tokens.as_linear(h)
        return self.model.lm_head(h)

    def logits(self, input_ids, segment_ids):
        return self.head(self.hidden(input_ids, segment_ids))

    def loss(self, input_ids, segment_ids, sel, targets, weights, scale):
        """(scale * loss_sum, loss_sum): summed float32 CE of the positions `sel` (flat b*T + t) against
        `targets` (= input_ids[b, t+1]), weighted by `weights` (= loss_mask[b, t+1])."""
        import mlx.core as mx
        import mlx.nn as nn

        h = self.hidden(input_ids, segment_ids)
        h = h.reshape(-1, h.shape[-1])[sel]
        logits = self.head(h).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, targets, reduction="none")
        loss_sum = mx.where(weights != 0, ce * weights, 0.0).sum()
        return loss_sum * scale, loss_sum


def build_steps(forward: Forward, optimizer, clip: float | None, compile: bool):
    """(forward_backward, eval, update) functions over the model's trainable parameters."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optimizers

    model = forward.model
    value_and_grad = nn.value_and_grad(model, forward.loss)

    def fb(input_ids, segment_ids, sel, targets, weights, scale):
        (_, loss_sum), grads = value_and_grad(input_ids, segment_ids, sel, targets, weights, scale)
        return loss_sum, grads

    def ev(input_ids, segment_ids, sel, targets, weights):
        return forward.loss(input_ids, segment_ids, sel, targets, weights, mx.array(1.0))[1]

    def update(grads):
        if clip is not None:
            grads, _ = optimizers.clip_grad_norm(grads, clip)
        optimizer.update(model, grads)

    if compile:
        # nn.value_and_grad writes its traced parameters into the model, so model.state must be an
        # output as well as an input (as in mlx_lm.tuner.trainer), or tracers would stay behind.
        fb_state = [model.state, mx.random.state]
        fb = partial(mx.compile, inputs=fb_state, outputs=fb_state)(fb)
        ev = partial(mx.compile, inputs=[model.state])(ev)
        state = [model.state, optimizer.state]
        update = partial(mx.compile, inputs=state, outputs=state)(update)
    return fb, ev, update


def _checkpointed(layer, h, mask):
    """Recompute one block in the backward pass (mx.checkpoint over the block's trainable parameters).

    mlx-lm's tuner.trainer.grad_checkpoint patches the block *class* process-wide; this wraps the call only.
    """
    import mlx.core as mx

    def inner(params, x, m):
        layer.update(params)
        return layer(x, m, cache=None)

    return mx.checkpoint(inner)(layer.trainable_parameters(), h, mask)
