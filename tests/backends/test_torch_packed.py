"""Packed attention without a dense mask, and the chunked loss, held to the reference paths on the CPU.

The reference is what specc ran before these existed: the [B, 1, T, T] additive mask (attention: dense)
and autograd through head(h).float() and an unchunked cross-entropy. Tolerances are float32 rounding:
the padding-free row runs its matmuls on other shapes, so sums are ordered differently.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from backends.protocol import Batch, LoraSettings, ModelSettings, OptimizerSettings  # noqa: E402
from backends.torch_backend import TorchBackend  # noqa: E402
from backends.torch_loss import HeadLoss, plain_head  # noqa: E402
from backends.torch_packed import AttentionMode, flatten, unsupported  # noqa: E402
from specc.errors import UserError  # noqa: E402
from tests.backends.test_torch_backend import doc, make_batch, step_batches, train  # noqa: E402

torch.set_num_threads(1)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LOSS_REL = 1e-6          # loss sums (float32, a few hundred nats)
GRAD = dict(rtol=1e-4, atol=1e-6)


def new_backend(model_dir, attention="dense", *, chunk=4096, dropout=0.0, compile=False, lora=True, seed=0):
    be = TorchBackend()
    be.setup(ModelSettings(path=model_dir, device="cpu", attention=attention, loss_chunk=chunk, compile=compile),
             LoraSettings(rank=4, alpha=8.0, dropout=dropout, target_modules=TARGETS) if lora else None,
             OptimizerSettings(), seed)
    return be


def randomise_adapters(be, seed=1):
    """LoRA B starts at zero (the base model): give the adapters weights so their gradients are all non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in be.params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def packed_batches() -> list[Batch]:
    """Several documents per row, a row with one document and padding, a full row, and a prompt (mask 0)."""
    a = make_batch([[doc(1, 9), doc(2, 11)], [doc(3, 14)], [doc(4, 5), doc(5, 6), doc(6, 7), doc(7, 6)]], 24)
    lm = a.loss_mask.copy()
    lm[0, 1:4] = 0.0
    a = Batch(a.input_ids, lm, a.segment_ids, a.position_ids)
    b = make_batch([[doc(8, 20)], [doc(9, 3), doc(10, 17)]], 20)
    return [a, b]


def grads(be) -> list:
    return [p.grad.detach().clone() for p in be.params]


def loss_and_grads(be, batch):
    be.zero_grad()
    loss, n = be.forward_backward(batch, 1.0 / batch.n_target_tokens)
    return loss, n, grads(be)


def assert_same_math(ref, other):
    """Loss and every adapter gradient of `other` equal `ref`'s on packed batches (adapters randomised in both)."""
    for be in (ref, other):
        randomise_adapters(be)
    for batch in packed_batches():
        lr, _, gr = loss_and_grads(ref, batch)
        lo, _, go = loss_and_grads(other, batch)
        assert lo == pytest.approx(lr, rel=LOSS_REL)
        for x, y in zip(gr, go):
            torch.testing.assert_close(y, x, **GRAD)


# ------------------------------------------------------------------ the padding-free layout
def test_flatten_drops_padding_and_maps_targets():
    batch = make_batch([[doc(1, 3), doc(2, 4)], [doc(3, 5)]], 8)
    rows, cols = np.nonzero(batch.loss_mask[:, 1:])
    flat = flatten(batch, rows, cols)
    assert flat.ids.tolist() == batch.input_ids[batch.segment_ids > 0].tolist()
    assert flat.cu.tolist() == [0, 3, 7, 12] and flat.max_len == 5
    assert flat.pos.tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    # target (r, c + 1) is predicted from (r, c): row 1 starts at flat index 7
    assert flat.src.tolist() == [0, 1, 3, 4, 5, 7, 8, 9, 10]
    assert (flat.ids[flat.src + 1] == batch.input_ids[rows, cols + 1]).all()


def test_flatten_refuses_what_it_cannot_express():
    batch = make_batch([[doc(1, 3)]], 6)
    lm = batch.loss_mask.copy()
    lm[0, 4] = 1.0                                    # a target predicted from padding
    rows, cols = np.nonzero(lm[:, 1:])
    assert flatten(Batch(batch.input_ids, lm, batch.segment_ids, batch.position_ids), rows, cols) is None
    seg = np.array([[1, 1, 2, 2, 1, 1]], np.int32)    # segment 1 split in two: the dense mask joins it
    split = Batch(batch.input_ids, np.zeros((1, 6), np.float32), seg, np.zeros((1, 6), np.int32))
    assert flatten(split, np.array([0]), np.array([0])) is None


# ------------------------------------------------------------------ sdpa_varlen == dense
def test_varlen_loss_and_gradients_equal_dense(tiny_llama_dir):
    dense, varlen = new_backend(tiny_llama_dir, "dense"), new_backend(tiny_llama_dir, "sdpa_varlen")
    for be in (dense, varlen):
        randomise_adapters(be)
    assert varlen.describe()["attention"]["mode"] == "sdpa_varlen"
    assert varlen.describe()["attention"]["layout"] == "padding-free [1, N]"
    for batch in packed_batches():
        ld, nd, gd = loss_and_grads(dense, batch)
        lv, nv, gv = loss_and_grads(varlen, batch)
        assert nd == nv == batch.n_target_tokens
        assert lv == pytest.approx(ld, rel=LOSS_REL)
        assert all(float(g.abs().max()) > 0 for g in gd)     # every adapter gets a gradient: the check bites
        for x, y in zip(gd, gv):
            torch.testing.assert_close(y, x, **GRAD)
        assert varlen.eval_loss(batch)[0] == pytest.approx(dense.eval_loss(batch)[0], rel=LOSS_REL)


def test_varlen_with_gradient_checkpointing_equals_dense(tiny_llama_dir):
    """Recomputation in backward must run the very kernel and inputs of the forward pass."""
    dense = new_backend(tiny_llama_dir, "dense")
    varlen = TorchBackend()
    varlen.setup(ModelSettings(path=tiny_llama_dir, device="cpu", attention="sdpa_varlen", gradient_checkpointing=True),
                 LoraSettings(rank=4, alpha=8.0, target_modules=TARGETS), OptimizerSettings(), 0)
    assert_same_math(dense, varlen)


def test_other_calls_of_the_model_get_plain_sdpa(tiny_llama_dir):
    """A call without document boundaries (an NF4 probe, generation) is sdpa with transformers' own mask."""
    dense, varlen = new_backend(tiny_llama_dir, "dense"), new_backend(tiny_llama_dir, "sdpa_varlen")
    assert varlen._hf().config._attn_implementation == "specc_varlen"
    ids = torch.from_numpy(make_batch([[doc(3, 10)], [doc(4, 10)]], 10).input_ids)
    pad = torch.ones(2, 10, dtype=torch.long)
    pad[1, :3] = 0                                            # left padding, as generation has it
    with torch.no_grad():
        for be in (dense, varlen):
            be.model.eval()
        want = dense.model(input_ids=ids, attention_mask=pad).logits
        got = varlen.model(input_ids=ids, attention_mask=pad).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_varlen_keeps_documents_apart(tiny_llama_dir):
    """The same document alone and packed behind another gives the same loss: nothing leaks across."""
    be = new_backend(tiny_llama_dir, "sdpa_varlen")
    randomise_adapters(be)
    d1, d2 = doc(11, 9), doc(12, 13)
    alone = be.eval_loss(make_batch([[d2]], 13))
    both = be.eval_loss(make_batch([[d1, d2]], 24))
    first = be.eval_loss(make_batch([[d1]], 9))
    assert both[1] == alone[1] + first[1]
    assert both[0] == pytest.approx(alone[0] + first[0], rel=LOSS_REL)


def test_varlen_falls_back_to_dense_for_a_batch_it_cannot_flatten(tiny_llama_dir):
    dense, varlen = new_backend(tiny_llama_dir, "dense"), new_backend(tiny_llama_dir, "sdpa_varlen")
    batch = make_batch([[doc(1, 5)], [doc(2, 8)]], 8)
    lm = batch.loss_mask.copy()
    lm[0, 6] = 1.0                                    # predicted from padding: no padding-free form
    odd = Batch(batch.input_ids, lm, batch.segment_ids, batch.position_ids)
    assert varlen.eval_loss(odd)[0] == pytest.approx(dense.eval_loss(odd)[0], rel=LOSS_REL)


@pytest.mark.integration
def test_compiled_layers_give_the_same_loss_and_gradients(tiny_llama_dir):
    """model.compile: torch.compile on each decoder layer (inductor on the CPU), the varlen kernel outside it."""
    plain, compiled = new_backend(tiny_llama_dir, "sdpa_varlen"), new_backend(tiny_llama_dir, "sdpa_varlen", compile=True)
    assert compiled.describe()["compile"] == "torch.compile on 2 decoder layers"
    names = [n for n, _ in compiled.trainable]
    assert names == [n for n, _ in plain.trainable] and not any("_orig_mod" in n for n in names)
    for be in (plain, compiled):
        randomise_adapters(be)
    batch = packed_batches()[0]
    lp, _, gp = loss_and_grads(plain, batch)
    lc, _, gc = loss_and_grads(compiled, batch)
    assert lc == pytest.approx(lp, rel=1e-5)
    for x, y in zip(gp, gc):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa_varlen", "dense"])
def test_resume_is_bit_exact_in_each_mode(tiny_llama_dir, attention):
    k, m = 2, 2
    batches = step_batches(k + m, seed=5)
    ref = new_backend(tiny_llama_dir, attention, dropout=0.2, chunk=7)
    ref_losses = train(ref, batches)
    first = new_backend(tiny_llama_dir, attention, dropout=0.2, chunk=7)
    losses = train(first, batches[:k])
    saved = first.state()
    torch.manual_seed(4321)
    second = new_backend(tiny_llama_dir, attention, dropout=0.2, chunk=7)
    second.load_state({key: v.copy() for key, v in saved.items()})
    losses += train(second, batches[k:])
    assert losses == ref_losses
    end, want = second.state(), ref.state()
    assert all(np.array_equal(end[key], want[key]) for key in want)


# ------------------------------------------------------------------ flex == dense (forward on the CPU)
def test_flex_forward_equals_dense_and_cannot_train_on_cpu(tiny_llama_dir):
    dense = new_backend(tiny_llama_dir, "dense")
    randomise_adapters(dense)
    reference = [dense.eval_loss(b) for b in packed_batches()]
    # FlexAttention has no CPU backward: a training setup is refused, an evaluation-only one runs.
    with pytest.raises(UserError, match="flex cannot train on the CPU"):
        new_backend(tiny_llama_dir, "flex")
    control = new_backend(tiny_llama_dir, "flex", lora=False)
    assert control.describe()["attention"]["mode"] == "flex"
    base = new_backend(tiny_llama_dir, "dense", lora=False)
    for b in packed_batches():
        assert control.eval_loss(b)[0] == pytest.approx(base.eval_loss(b)[0], rel=LOSS_REL)
    # the same BlockMask path with the trained adapters of `dense`
    dense._attn.use("flex")
    try:
        for b, (want, n) in zip(packed_batches(), reference):
            got = dense.eval_loss(b)
            assert got[1] == n and got[0] == pytest.approx(want, rel=LOSS_REL)
    finally:
        dense._attn.use("dense")


def test_block_mask_has_the_dense_mask_pattern(tiny_llama_dir):
    from torch.nn.attention.flex_attention import create_mask

    be = new_backend(tiny_llama_dir, "dense")
    batch = make_batch([[doc(1, 4), doc(2, 3)], [doc(3, 6)]], 8)
    dense, _ = be._attention_inputs(batch)
    mode = AttentionMode(torch, "flex", torch.device("cpu"), torch.float32, be._hf().config, "sdpa", training=False)
    block = mode.block_mask(batch.segment_ids)
    tokens = create_mask(block.mask_mod, 2, 1, 8, 8, device="cpu")   # the BlockMask's own token-level form
    assert torch.equal(tokens, dense == 0)


# ------------------------------------------------------------------ choosing
def test_auto_on_the_cpu_is_varlen_with_the_dense_mask_for_short_documents(tiny_llama_dir):
    be = new_backend(tiny_llama_dir, "auto")
    d = be.describe()
    assert d["attention"]["requested"] == "auto" and d["attention"]["mode"] == "sdpa_varlen"
    assert d["attention"]["kernel"] == ("scaled_dot_product_attention per document (is_causal); the dense mask for "
                                        "batches of documents under 64 tokens on average")
    assert d["loss"] == "fused linear + float32 cross-entropy in chunks of 4096 targets" and d["loss_chunk"] == 4096
    assert d["compile"] is False and d["liger"] is False and d["lora_compute"] == "float32"

    def routed(batch):
        rows, cols = np.nonzero(batch.loss_mask[:, 1:])
        return "cu_seq_lens_q" in be._model_inputs(batch, batch.input_ids.astype(np.int64), rows, cols)[0]

    short = make_batch([[doc(i, 16) for i in range(8)]] * 2, 128)          # 16 documents of 16 tokens
    long = make_batch([[doc(1, 90), doc(2, 38)], [doc(3, 128)]], 128)       # 3 documents, 85 tokens on average
    assert not routed(short) and routed(long)
    dense = new_backend(tiny_llama_dir, "dense")
    for b in (short, long):
        assert be.eval_loss(b)[0] == pytest.approx(dense.eval_loss(b)[0], rel=LOSS_REL)
    explicit = new_backend(tiny_llama_dir, "sdpa_varlen")                   # asked for: every batch
    assert "dense mask" not in explicit.describe()["attention"]["kernel"]
    rows, cols = np.nonzero(short.loss_mask[:, 1:])
    assert "cu_seq_lens_q" in explicit._model_inputs(short, short.input_ids.astype(np.int64), rows, cols)[0]


def test_a_model_switched_to_another_attention_gets_the_dense_inputs(tiny_llama_dir):
    """If the model's attention implementation is changed after setup, the packed layout is not used."""
    be, dense = new_backend(tiny_llama_dir, "sdpa_varlen"), new_backend(tiny_llama_dir, "dense")
    be._hf().set_attn_implementation("eager")
    batch = packed_batches()[0]
    assert be.eval_loss(batch)[0] == pytest.approx(dense.eval_loss(batch)[0], rel=LOSS_REL)


def test_models_whose_attention_is_more_than_sdpa_keep_dense():
    from transformers import LlamaConfig, MistralConfig

    assert unsupported(LlamaConfig(), "sdpa") is None
    assert "sliding-window" in unsupported(MistralConfig(sliding_window=4096), "sdpa")
    assert "attention dropout" in unsupported(LlamaConfig(attention_dropout=0.1), "sdpa")
    assert "flash_attention_2" in unsupported(LlamaConfig(), "flash_attention_2")
    cpu = torch.device("cpu")
    auto = AttentionMode(torch, "auto", cpu, torch.float32, MistralConfig(sliding_window=64), "sdpa", training=True)
    assert auto.mode == "dense"
    with pytest.raises(UserError, match="sliding-window"):
        AttentionMode(torch, "sdpa_varlen", cpu, torch.float32, MistralConfig(sliding_window=64), "sdpa", training=True)


def test_liger_needs_cuda(tiny_llama_dir):
    be = TorchBackend()
    with pytest.raises(UserError, match="liger needs CUDA"):
        be.setup(ModelSettings(path=tiny_llama_dir, device="cpu", liger=True), LoraSettings(), OptimizerSettings(), 0)


# ------------------------------------------------------------------ the chunked loss == the plain loss
def _plain_loss(head, hidden, targets, weights):
    ce = torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")
    return (ce * weights).sum()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, dict(rtol=1e-5, atol=1e-6)),
                                        (torch.bfloat16, dict(rtol=2e-2, atol=2e-3))])
@pytest.mark.parametrize("chunk", [16, 37, 100, 1000])
def test_chunked_loss_and_gradient_equal_the_plain_loss(dtype, tol, chunk):
    gen = torch.Generator().manual_seed(0)
    n, d, vocab = 100, 32, 517
    head = torch.nn.Linear(d, vocab, bias=False).to(dtype).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, d, generator=gen) * 0.3)
    x = (torch.randn(n, d, generator=gen)).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    weights = torch.rand(n, generator=gen) + (torch.arange(n) % 3 == 0).float()   # not all 1: weighted targets
    loss = HeadLoss(torch, head, chunk)
    assert loss.kind == "chunked" and plain_head(torch, head)
    h1, h2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want = _plain_loss(head, h1, targets, weights)
    got = loss(h2, targets, weights)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6 if dtype == torch.float32 else 1e-3, atol=1e-4)
    (want * 0.01).backward()
    (got * 0.01).backward()
    torch.testing.assert_close(h2.grad.float(), h1.grad.float(), **tol)
    with torch.no_grad():   # evaluation: chunked, no gradient work
        torch.testing.assert_close(loss(x, targets, weights), want.detach(), rtol=1e-6 if dtype == torch.float32
                                   else 1e-3, atol=1e-4)


def test_checkpointed_chunks_for_a_trainable_head_equal_the_plain_loss():
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(16, 97)
    x = torch.randn(40, 16, generator=gen)
    targets = torch.randint(0, 97, (40,), generator=gen)
    weights = torch.ones(40)
    loss = HeadLoss(torch, head, 9)
    assert loss.kind == "checkpointed" and not plain_head(torch, head)
    h1, h2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want = _plain_loss(head, h1, targets, weights)
    want.backward()
    gw = head.weight.grad.clone()
    head.weight.grad = None
    got = loss(h2, targets, weights)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(head.weight.grad, gw, rtol=1e-5, atol=1e-7)


def test_backend_loss_in_small_chunks_equals_one_chunk(tiny_llama_dir):
    whole, small = new_backend(tiny_llama_dir, chunk=4096), new_backend(tiny_llama_dir, chunk=16)
    assert_same_math(whole, small)


def test_bf16_lora_under_autocast_matches_float32_lora_math(tiny_llama_dir):
    """bf16 models run the LoRA matmuls in bf16 (autocast, float32 weights and AdamW); the reference is peft's
    float32 LoRA math on the same bf16 model. Agreement to bf16 rounding, on the loss and every gradient."""
    def bf16_backend():
        be = TorchBackend()
        be.setup(ModelSettings(path=tiny_llama_dir, device="cpu", dtype="bfloat16", attention="sdpa_varlen"),
                 LoraSettings(rank=4, alpha=8.0, target_modules=TARGETS), OptimizerSettings(), 0)
        randomise_adapters(be)
        return be

    fast, ref = bf16_backend(), bf16_backend()
    assert fast.describe()["lora_compute"] == "bfloat16 (autocast; float32 weights, gradients, AdamW)"
    assert all(p.dtype == torch.float32 for p in fast.params)
    ref._autocast = False
    for batch in packed_batches():
        lf, _, gf = loss_and_grads(fast, batch)
        lr, _, gr = loss_and_grads(ref, batch)
        assert lf == pytest.approx(lr, rel=1e-2)
        for x, y in zip(gf, gr):
            assert x.dtype == torch.float32
            assert float((x - y).norm() / y.norm()) < 5e-2
