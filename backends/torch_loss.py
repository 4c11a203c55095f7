"""The torch backend's loss: the LM head and a float32 cross-entropy at target positions only, in chunks.

A 128k vocabulary over 16k target tokens would be 8 GB of float32 logits, twice over with their
gradient. So the head runs on ``chunk`` target rows at a time (``model.loss_chunk``):

* ``chunked`` (a frozen plain ``nn.Linear`` head, the usual case: LoRA never trains the head here):
  ``ChunkedLinearCrossEntropy`` computes each chunk's logits, loss and the gradient with respect to the
  hidden states in the forward pass, keeps only that gradient (``[n, hidden]``), and drops the logits;
  backward scales it. Same arithmetic as autograd through ``head(h).float()`` and ``cross_entropy``: the
  softmax gradient in float32, cast to the head's dtype, times the head weight.
* ``liger`` (``model.liger``, CUDA): Liger's fused linear cross-entropy (Triton), for unit weights.
* ``checkpointed`` (any other head, e.g. a quantized or adapted one): each chunk under activation
  checkpointing, so only one chunk's logits exist at a time; the head runs twice per chunk.

tests/backends/test_torch_packed.py holds each to the plain, unchunked loss and its gradients.
"""
from __future__ import annotations


PLAIN_HEAD_MODEL_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo", "olmo2", "starcoder2", "gemma",
})


def gathered_head_is_exact(hf) -> bool:
    """Whether the loss may run the LM head on target positions only: the logits are exactly
    lm_head(final hidden state), with no soft-capping or logit scaling (else the full forward runs)."""
    return (getattr(hf.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
            and not any(getattr(hf.config, a, None) not in (None, 1, 1.0) for a in
                        ("final_logit_softcapping", "logit_scale", "logits_scaling"))
            and hasattr(hf, "get_decoder") and hf.get_output_embeddings() is not None)


def plain_head(torch, head) -> bool:
    """A dense, frozen nn.Linear (not a bitsandbytes or LoRA layer): the fused chunked path applies."""
    w = getattr(head, "weight", None)
    return (type(head) is torch.nn.Linear and w is not None and w.dtype.is_floating_point
            and not w.requires_grad and not hasattr(w, "quant_state")
            and (head.bias is None or not head.bias.requires_grad))


def _chunk_loss(torch, logits, targets, weights):
    """(float32 weighted CE sum of one chunk, its float32 logits)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return ((lse - picked) * weights).sum(), logits, lse


def _make_function(torch):
    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """sum_i w_i * CE(hidden_i @ W^T + b, target_i); the hidden-state gradient is computed chunk by chunk
        in the forward pass (the weight is frozen), so no chunk's logits outlive it."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, weights, chunk):
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden)
            for i in range(0, hidden.shape[0], chunk):
                h = hidden[i:i + chunk]
                loss, logits, lse = _chunk_loss(torch, torch.nn.functional.linear(h, weight, bias), targets[i:i + chunk],
                                                weights[i:i + chunk])
                total += loss
                g = logits.sub_(lse[:, None]).exp_()                      # softmax, in place of the logits
                g[torch.arange(g.shape[0], device=g.device), targets[i:i + chunk]] -= 1.0
                g.mul_(weights[i:i + chunk, None])
                grad[i:i + chunk] = g.to(h.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, grad_out):
            (grad,) = ctx.saved_tensors
            return grad * grad_out.to(grad.dtype), None, None, None, None, None

    return ChunkedLinearCrossEntropy


_functions: dict[int, object] = {}


class HeadLoss:
    """The weighted float32 cross-entropy sum of `head` over hidden states at target positions."""

    def __init__(self, torch, head, chunk: int, liger: bool = False):
        self._torch, self.head, self.chunk = torch, head, int(chunk)
        self.fused = plain_head(torch, head)
        self._liger = None
        if liger and self.fused:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

            self._liger = liger_fused_linear_cross_entropy
        self.kind = "liger" if self._liger else "chunked" if self.fused else "checkpointed"
        if id(torch) not in _functions:
            _functions[id(torch)] = _make_function(torch)
        self._fn = _functions[id(torch)]

    def describe(self) -> str:
        return {"liger": "Liger fused linear cross-entropy (float32 accumulation)",
                "chunked": f"fused linear + float32 cross-entropy in chunks of {self.chunk} targets",
                "checkpointed": f"float32 cross-entropy in checkpointed chunks of {self.chunk} targets"}[self.kind]

    def __call__(self, hidden, targets, weights):
        torch = self._torch
        grad = torch.is_grad_enabled() and hidden.requires_grad
        if self.kind == "liger" and grad and bool((weights == 1).all()):
            return self._liger(hidden, self.head.weight, targets, bias=self.head.bias, reduction="sum").float()
        if self.fused and grad:
            return self._fn.apply(hidden, self.head.weight, self.head.bias, targets, weights, self.chunk)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, hidden.shape[0], self.chunk):
            part = (hidden[i:i + self.chunk], targets[i:i + self.chunk], weights[i:i + self.chunk])
            if grad:
                from torch.utils.checkpoint import checkpoint

                total = total + checkpoint(self._chunk, *part, use_reentrant=False)
            else:
                total = total + self._chunk(*part)
        return total

    def _chunk(self, h, targets, weights):
        return _chunk_loss(self._torch, self.head(h), targets, weights)[0]
