"""MLX backend (backends/mlx_backend.py, mlx_load, mlx_forward, mlx_layout) on a tiny random Llama, built locally."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
pytest.importorskip("safetensors")

import mlx.core as mx  # noqa: E402

from backends.protocol import Batch, LoraSettings, ModelSettings, OptimizerSettings  # noqa: E402
from specc.errors import UserError  # noqa: E402
from tests.tiny_llama import make_tiny_llama  # noqa: E402

VOCAB = 128


@pytest.fixture(scope="session")
def mlx_tiny_dir(tmp_path_factory) -> Path:
    # hidden 64 / intermediate 128: every block Linear has in_features % 64 == 0, so 4-bit group-64
    # quantization covers all of them.
    path = tmp_path_factory.mktemp("mlx_tiny") / "tiny-llama"
    return make_tiny_llama(path, tokenizer="words", hidden_size=64, intermediate_size=128, num_layers=2,
                           vocab_size=VOCAB, num_heads=4, num_kv_heads=2, seed=0)


@pytest.fixture(scope="session")
def mlx_tiny_tied_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlx_tiny_tied") / "tiny-llama-tied"
    return make_tiny_llama(path, tokenizer="words", hidden_size=64, intermediate_size=128, num_layers=2,
                           vocab_size=VOCAB, tie_word_embeddings=True, seed=1)


def make_backend(path, *, quantization="none", dropout=0.0, rank=4, alpha=8.0, seed=0, layers=None,
                 targets=("q_proj", "v_proj"), weight_decay=0.0, grad_clip=1.0, dtype="auto",
                 gradient_checkpointing=False, device="auto"):
    from backends.mlx_backend import MLXBackend

    b = MLXBackend()
    b.setup(ModelSettings(path=Path(path), quantization=quantization, dtype=dtype, device=device,
                          gradient_checkpointing=gradient_checkpointing),
            LoraSettings(rank=rank, alpha=alpha, dropout=dropout, target_modules=tuple(targets), layers=layers),
            OptimizerSettings(weight_decay=weight_decay, grad_clip=grad_clip), seed)
    return b


def pack(docs: list[list[int]], T: int, loss_on_first=False) -> tuple[np.ndarray, ...]:
    """One packed row: segments 1..k, then padding (segment 0)."""
    ids = np.zeros(T, np.int64)
    seg = np.zeros(T, np.int64)
    pos = np.zeros(T, np.int64)
    lm = np.zeros(T, np.float32)
    t = 0
    for k, doc in enumerate(docs, start=1):
        n = len(doc)
        ids[t:t + n] = doc
        seg[t:t + n] = k
        pos[t:t + n] = np.arange(n)
        lm[t + 1:t + n] = 1.0  # each document's first token is not a target
        t += n
    return ids, lm, seg, pos


def make_batch(rows: list[list[list[int]]], T: int) -> Batch:
    packed = [pack(r, T) for r in rows]
    return Batch(*(np.stack([p[i] for p in packed]) for i in range(4)))


def random_batch(rng, B=2, T=24) -> Batch:
    rows = []
    for _ in range(B):
        n1 = int(rng.integers(4, T // 2))
        n2 = int(rng.integers(3, T - n1 - 2))
        rows.append([list(rng.integers(4, VOCAB, n1)), list(rng.integers(4, VOCAB, n2))])
    return make_batch(rows, T)


def batches(seed: int, n: int, B=2, T=24) -> list[Batch]:
    rng = np.random.default_rng(seed)
    return [random_batch(rng, B, T) for _ in range(n)]


def train(b, data: list[Batch], lr=1e-2, micro=1):
    """One optimizer step per `micro` micro-batches; returns the losses (floats)."""
    losses = []
    for i in range(0, len(data), micro):
        group = data[i:i + micro]
        total = sum(x.n_target_tokens for x in group)
        for x in group:
            loss, n = b.forward_backward(x, 1.0 / total)
            assert n == x.n_target_tokens
            losses.append(loss)
        b.optimizer_step(lr)
    return losses


def adapters(b) -> dict[str, np.ndarray]:
    return {k: v for k, v in b.state().items() if k.startswith("adapter/")}


def logits_of(b, ids, seg):
    out = b._logits(mx.array(np.asarray(ids, np.int32)), mx.array(np.asarray(seg, np.int32)))
    mx.eval(out)
    return np.array(out)


# ---------------------------------------------------------------- setup errors
def test_missing_dir_lists_parent(tmp_path):
    (tmp_path / "llama-3b").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError) as err:
        make_backend(tmp_path / "llama-3B")
    text = str(err.value)
    assert "does not exist" in text and "llama-3b/" in text and "notes.txt" in text


def test_missing_weights_lists_contents(tmp_path, mlx_tiny_dir):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text((mlx_tiny_dir / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UserError) as err:
        make_backend(d)
    text = str(err.value)
    assert "safetensors" in text and "pytorch_model.bin" in text and "config.json" in text


def test_missing_config_lists_contents(tmp_path):
    d = tmp_path / "noconfig"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as err:
        make_backend(d)
    assert "config.json" in str(err.value) and "model.safetensors" in str(err.value)


def test_unknown_target_module(mlx_tiny_dir):
    with pytest.raises(UserError) as err:
        make_backend(mlx_tiny_dir, targets=("q_proj", "c_attn"))
    assert "c_attn" in str(err.value) and "self_attn.q_proj" in str(err.value)


def test_gpu_requested_without_gpu(mlx_tiny_dir):
    if mx.is_available(mx.gpu):
        pytest.skip("this machine has an MLX GPU")
    with pytest.raises(UserError) as err:
        make_backend(mlx_tiny_dir, device="gpu")
    assert "gpu" in str(err.value).lower()


# ---------------------------------------------------------------- setup facts
def test_lora_layout_scale_and_mapping(mlx_tiny_dir):
    from mlx_lm.tuner.lora import LoRALinear

    b = make_backend(mlx_tiny_dir, rank=4, alpha=16.0, layers=1, targets=("q_proj", "gate_proj", "down_proj"))
    blocks = b.model.model.layers
    last = blocks[-1]
    for mod in (last.self_attn.q_proj, last.mlp.gate_proj, last.mlp.down_proj):
        assert isinstance(mod, LoRALinear) and mod.scale == 4.0  # alpha / rank
    assert not isinstance(blocks[0].self_attn.q_proj, LoRALinear)  # only the last `layers` blocks
    assert not isinstance(last.self_attn.v_proj, LoRALinear)
    names = [k for k in b.state() if k.startswith("adapter/")]
    assert sorted(names) == sorted(f"adapter/model.layers.1.{m}.{w}" for m in
                                   ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj") for w in ("lora_a", "lora_b"))
    d = b.describe()
    assert d["params_trainable"] == 4 * (64 + 64) + 4 * (64 + 128) + 4 * (128 + 64)
    assert d["device"] and d["dtype"] == "float32" and d["quantization"]["requested"] == "none"


def test_rope_parameters_are_translated(tmp_path):
    """transformers>=5 configs carry rope_parameters; mlx-lm alone would fall back to theta=10000."""
    d = make_tiny_llama(tmp_path / "theta", tokenizer="words", rope_theta=500000.0, num_layers=1)
    b = make_backend(d)
    assert b.model.model.layers[0].self_attn.rope.base == 500000.0


def test_lora_init_is_seeded(mlx_tiny_dir):
    a1, a2 = adapters(make_backend(mlx_tiny_dir, seed=3)), adapters(make_backend(mlx_tiny_dir, seed=3))
    a3 = adapters(make_backend(mlx_tiny_dir, seed=4))
    assert all(np.array_equal(a1[k], a2[k]) for k in a1)
    assert not all(np.array_equal(a1[k], a3[k]) for k in a1)
    assert all(not a1[k].any() for k in a1 if k.endswith("lora_b"))  # B starts at zero, like PEFT


def test_nf4_is_mlx_affine_4bit(mlx_tiny_dir):
    import mlx.nn as nn

    b = make_backend(mlx_tiny_dir, quantization="nf4")
    q = b.describe()["quantization"]
    assert q["bits"] == 4 and q["group_size"] == 64 and q["mode"] == "affine" and "not NF4" in q["method"]
    assert q["quantized_modules"] == 2 * 7 + 2 and q["skipped_modules"] == []  # + embed_tokens, lm_head
    attn = b.model.model.layers[0].self_attn
    assert isinstance(attn.q_proj.linear, nn.QuantizedLinear)  # LoRA wraps the quantized base
    assert isinstance(attn.k_proj, nn.QuantizedLinear)
    assert isinstance(b.model.lm_head, nn.QuantizedLinear)
    assert isinstance(b.model.model.embed_tokens, nn.QuantizedEmbedding)
    # the frozen quantized base is not trainable
    assert b.describe()["params_trainable"] == 2 * (4 * (64 + 64) + 4 * (64 + 32))


def test_memory_and_describe(mlx_tiny_dir):
    b = make_backend(mlx_tiny_dir)
    train(b, batches(0, 1))
    m = b.memory()
    assert m.peak_mb > 0 and m.current_mb >= 0 and m.source
    json.dumps(b.describe())  # run-log friendly


# ---------------------------------------------------------------- attention mask
@pytest.mark.parametrize("tied", [False, True])
def test_packed_documents_do_not_see_each_other(mlx_tiny_dir, mlx_tiny_tied_dir, tied):
    path = mlx_tiny_tied_dir if tied else mlx_tiny_dir
    b = make_backend(path)
    rng = np.random.default_rng(1)
    doc1, doc2 = list(rng.integers(4, VOCAB, 9)), list(rng.integers(4, VOCAB, 7))
    T = 20
    packed = pack([doc1, doc2], T)
    alone2 = pack([doc2], T)
    alone1 = pack([doc1], T)
    lp = logits_of(b, packed[0][None], packed[2][None])[0]
    l2 = logits_of(b, alone2[0][None], alone2[2][None])[0]
    l1 = logits_of(b, alone1[0][None], alone1[2][None])[0]
    np.testing.assert_allclose(lp[9:16], l2[:7], atol=1e-4, rtol=0)
    np.testing.assert_allclose(lp[:9], l1[:9], atol=1e-5, rtol=0)
    # and it is not trivially true: without the segment mask document 2 would see document 1
    leaky = logits_of(b, packed[0][None], np.where(packed[2] > 0, 1, 0)[None])[0]
    assert np.abs(leaky[9:16] - l2[:7]).max() > 1e-3
    # unpacked, unpadded: our explicit-mask forward equals mlx-lm's own model call
    own = b.model(mx.array(np.asarray(doc1, np.int32))[None])
    np.testing.assert_allclose(l1[:9], np.array(own)[0], atol=1e-5, rtol=0)


def test_padding_does_not_change_real_tokens_and_loss_is_sum_ce(mlx_tiny_dir):
    b = make_backend(mlx_tiny_dir)
    rng = np.random.default_rng(2)
    doc = list(rng.integers(4, VOCAB, 10))
    short, padded = make_batch([[doc]], 10), make_batch([[doc]], 16)
    np.testing.assert_allclose(logits_of(b, padded.input_ids, padded.segment_ids)[0, :10],
                               logits_of(b, short.input_ids, short.segment_ids)[0], atol=1e-5, rtol=0)
    ls, n = b.eval_loss(short)
    lp, n2 = b.eval_loss(padded)
    assert n == n2 == 9 and math.isclose(ls, lp, rel_tol=1e-5)
    # reference: float64 log-softmax CE over targets input_ids[1:], summed
    lg = logits_of(b, short.input_ids, short.segment_ids)[0].astype(np.float64)
    logp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
    ref = -sum(logp[t - 1, doc[t]] for t in range(1, 10))
    assert math.isclose(ls, ref, rel_tol=1e-5)


def test_relayout_is_exact(mlx_tiny_dir):
    """Long packed rows of short documents are re-packed into short rows: same loss, same gradients."""
    from backends.mlx_layout import relayout

    rng = np.random.default_rng(8)
    rows = [[list(rng.integers(4, VOCAB, int(rng.integers(5, 14)))) for _ in range(22)] for _ in range(3)]
    batch = make_batch(rows + [[]], 256)  # a 4th, all-padding row
    b = make_backend(mlx_tiny_dir, targets=("q_proj", "v_proj", "down_proj"))
    results = {}
    for flag in (True, False):
        b.relayout = flag
        loss, n = b.forward_backward(batch, 1.0 / batch.n_target_tokens)
        results[flag] = (loss, n, b.last_layout, {k: np.array(v) for k, v in _flat(b._grads).items()})
        b.zero_grad()
        results[flag] += (b.eval_loss(batch)[0],)
    (l1, n1, shape1, g1, e1), (l0, n0, shape0, g0, e0) = results[True], results[False]
    assert shape0 == (4, 256) and shape1[1] <= 16 and shape1[0] * shape1[1] < 3 * 256
    assert n1 == n0 == batch.n_target_tokens
    assert math.isclose(l1, l0, rel_tol=1e-5) and math.isclose(e1, e0, rel_tol=1e-5) and math.isclose(l1, e1, rel_tol=1e-5)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-4, atol=1e-7)

    # every token and target survives, each document intact and contiguous
    ids, lm, seg = (np.asarray(getattr(batch, f), dt) for f, dt in
                    (("input_ids", np.int32), ("loss_mask", np.float32), ("segment_ids", np.int32)))
    nid, nlm, nseg = relayout(ids, lm, seg, b._token_cost)
    assert sorted(map(tuple, _docs(ids, seg))) == sorted(map(tuple, _docs(nid, nseg)))
    assert nlm.sum() == lm.sum()
    # a target at a segment start (predicted across documents) keeps the layout
    lm2 = lm.copy()
    lm2[0, len(rows[0][0])] = 1.0
    assert relayout(ids, lm2, seg, b._token_cost)[0].shape == (3, ids.shape[1] - _tail_pad(seg))


def _docs(ids, seg):
    return [ids[r][seg[r] == k].tolist() for r in range(ids.shape[0]) for k in range(1, seg[r].max() + 1)]


def _tail_pad(seg):
    used = np.flatnonzero((seg > 0).any(axis=0))
    return seg.shape[1] - (used[-1] + 1)


# ---------------------------------------------------------------- training semantics
def test_gradient_accumulation_equals_one_big_batch(mlx_tiny_dir):
    data = batches(5, 2, B=2)
    big = Batch(*(np.concatenate([getattr(d, f) for d in data]) for f in
                  ("input_ids", "loss_mask", "segment_ids", "position_ids")))
    total = big.n_target_tokens
    b = make_backend(mlx_tiny_dir, targets=("q_proj", "v_proj", "down_proj"))
    sums = [b.forward_backward(d, 1.0 / total)[0] for d in data]
    g_acc = {k: np.array(v) for k, v in _flat(b._grads).items()}
    b.zero_grad()
    s_big, _ = b.forward_backward(big, 1.0 / total)
    g_big = {k: np.array(v) for k, v in _flat(b._grads).items()}
    assert math.isclose(sum(sums), s_big, rel_tol=1e-5)
    for k in g_big:
        np.testing.assert_allclose(g_acc[k], g_big[k], rtol=1e-4, atol=1e-7)


def _flat(tree):
    from mlx.utils import tree_flatten

    return dict(tree_flatten(tree))


def test_gradient_checkpointing_changes_nothing(mlx_tiny_dir):
    batch = batches(9, 1)[0]
    out = []
    for gc in (False, True):
        b = make_backend(mlx_tiny_dir, gradient_checkpointing=gc, targets=("q_proj", "v_proj", "gate_proj"))
        loss, _ = b.forward_backward(batch, 1.0 / batch.n_target_tokens)
        out.append((loss, {k: np.array(v) for k, v in _flat(b._grads).items()}))
    assert math.isclose(out[0][0], out[1][0], rel_tol=1e-6)
    for k in out[0][1]:
        np.testing.assert_allclose(out[1][1][k], out[0][1][k], rtol=1e-5, atol=1e-8)


def test_adamw_matches_torch_semantics(mlx_tiny_dir):
    """Two steps against a float64 reference of torch.optim.AdamW (decoupled wd, bias correction, clipping)."""
    b = make_backend(mlx_tiny_dir, weight_decay=0.1, grad_clip=0.05)
    p = {k: v.astype(np.float64) for k, v in _flat_np(b).items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step, (lr, batch) in enumerate(zip((1e-2, 5e-3), batches(7, 2)), start=1):
        b.forward_backward(batch, 1.0 / batch.n_target_tokens)
        g = {k: np.array(v).astype(np.float64) for k, v in _flat(b._grads).items()}
        norm = math.sqrt(sum((x ** 2).sum() for x in g.values()))
        res = b.optimizer_step(lr)
        assert res.applied and math.isclose(res.grad_norm, norm, rel_tol=1e-4)
        coef = min(0.05 / (norm + 1e-6), 1.0)
        for k in p:
            gk = g[k] * coef
            p[k] *= 1 - lr * 0.1
            m[k] = b1 * m[k] + (1 - b1) * gk
            v2[k] = b2 * v2[k] + (1 - b2) * gk * gk
            denom = np.sqrt(v2[k]) / math.sqrt(1 - b2 ** step) + eps
            p[k] -= lr / (1 - b1 ** step) * m[k] / denom
        got = _flat_np(b)
        for k in p:
            np.testing.assert_allclose(got[k], p[k], rtol=2e-4, atol=1e-6)
    st = b.state()
    assert int(st["optim/step"]) == 2 and float(st["optim/learning_rate"]) == pytest.approx(5e-3)


def _flat_np(b):
    return {k[len("adapter/"):]: v for k, v in adapters(b).items()}


def test_nonfinite_gradients_skip_the_update(mlx_tiny_dir):
    b = make_backend(mlx_tiny_dir)
    train(b, batches(1, 1))
    before = b.state()
    batch = batches(2, 1)[0]
    b.forward_backward(batch, float("inf"))
    res = b.optimizer_step(1e-2)
    assert not res.applied and not math.isfinite(res.grad_norm)
    after = b.state()
    assert before.keys() == after.keys()
    for k in before:
        assert np.array_equal(before[k], after[k]), k
    # gradients were dropped: a normal step now works
    b.forward_backward(batch, 1.0 / batch.n_target_tokens)
    assert b.optimizer_step(1e-2).applied


def test_batch_without_targets(mlx_tiny_dir):
    b = make_backend(mlx_tiny_dir)
    batch = batches(6, 1)[0]
    empty = Batch(batch.input_ids, np.zeros_like(batch.loss_mask), batch.segment_ids, batch.position_ids)
    assert b.forward_backward(empty, 1.0) == (0.0, 0)
    assert b.eval_loss(empty) == (0.0, 0)
    res = b.optimizer_step(1e-2)
    assert res.applied and res.grad_norm == 0.0


def test_eval_loss_is_deterministic_with_dropout(mlx_tiny_dir):
    b = make_backend(mlx_tiny_dir, dropout=0.5)
    train(b, batches(3, 2))  # lora_b != 0, so dropout would matter
    batch = batches(4, 1)[0]
    e1, e2 = b.eval_loss(batch), b.eval_loss(batch)
    assert e1 == e2
    assert b.model.training  # train mode restored
    t1, _ = b.forward_backward(batch, 0.0)
    t2, _ = b.forward_backward(batch, 0.0)
    b.zero_grad()
    assert t1 != t2  # dropout active in training


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_resume_is_bit_exact(mlx_tiny_dir, quantization):
    data = batches(11, 10)
    k = 3  # optimizer steps before the checkpoint (2 micro-batches each)
    kw = dict(quantization=quantization, dropout=0.2, weight_decay=0.01, seed=5,
              targets=("q_proj", "v_proj", "up_proj"))

    full = make_backend(mlx_tiny_dir, **kw)
    losses_full = train(full, data, micro=2)
    final_full = full.state()

    first = make_backend(mlx_tiny_dir, **kw)
    losses_a = train(first, data[:2 * k], micro=2)
    ckpt = first.state()
    assert all(isinstance(v, np.ndarray) for v in ckpt.values())
    assert ckpt["rng/mlx_key"].dtype == np.uint32 and ckpt["optim/step"].dtype == np.uint64
    assert any(k_.endswith(".m") for k_ in ckpt) and any(k_.endswith(".v") for k_ in ckpt)
    ckpt = {k_: v.copy() for k_, v in ckpt.items()}  # as if read back from disk

    _ = train(first, data[2 * k:2 * k + 2], micro=2)  # the old instance moving on must not matter

    resumed = make_backend(mlx_tiny_dir, **kw)
    resumed.load_state(ckpt)
    losses_b = train(resumed, data[2 * k:], micro=2)
    assert losses_a + losses_b == losses_full
    final = resumed.state()
    assert final.keys() == final_full.keys()
    for key in final:
        assert np.array_equal(final[key], final_full[key]), key


def test_state_roundtrip_bfloat16(mlx_tiny_dir):
    kw = dict(dtype="bfloat16", dropout=0.1, seed=2)
    data = batches(12, 4)
    a = make_backend(mlx_tiny_dir, **kw)
    assert a.describe()["dtype"] == "bfloat16"
    train(a, data[:2])
    st = a.state()
    losses_a = train(a, data[2:])
    # MLX's RNG is process-global: restore into the new instance only after `a` is done with it
    b = make_backend(mlx_tiny_dir, **kw)
    b.load_state(st)
    assert train(b, data[2:]) == losses_a
    sa, sb = a.state(), b.state()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_load_adapter_weights_keeps_fresh_optimizer(mlx_tiny_dir):
    a = make_backend(mlx_tiny_dir)
    train(a, batches(13, 2))
    b = make_backend(mlx_tiny_dir, seed=9)
    b.load_adapter_weights(a.state())
    sa, sb = a.state(), b.state()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa if k.startswith("adapter/"))
    assert int(sb["optim/step"]) == 0 and not any(sb[k].any() for k in sb if k.endswith(".m"))
    with pytest.raises(UserError):
        make_backend(mlx_tiny_dir, rank=2).load_adapter_weights(sa)


# ---------------------------------------------------------------- export
@pytest.mark.parametrize("tied", [False, True])
def test_export_loads_in_mlx_lm(tmp_path, mlx_tiny_dir, mlx_tiny_tied_dir, tied):
    from mlx_lm import load

    path = mlx_tiny_tied_dir if tied else mlx_tiny_dir
    b = make_backend(path, layers=1, targets=("q_proj", "k_proj", "o_proj", "gate_proj"), alpha=12.0)
    train(b, batches(14, 3), lr=5e-2)
    out = tmp_path / "adapter"
    b.export_adapter(out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["num_layers"] == 1
    assert cfg["lora_parameters"]["scale"] == 3.0 and cfg["lora_parameters"]["rank"] == 4

    model, tokenizer = load(str(path), adapter_path=str(out))
    ids = mx.array(np.random.default_rng(0).integers(4, VOCAB, (1, 12)).astype(np.int32))
    b.model.eval()
    ours = np.array(b.model(ids))
    theirs = np.array(model(ids))
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    base = np.array(load(str(path))[0](ids))
    assert np.abs(base - ours).max() > 1e-3  # the adapter actually changed something


def test_nf4_export_matches_mlx_lm_quantized_base(tmp_path, mlx_tiny_tied_dir):
    """The QLoRA training model == mlx-lm's own 4-bit/group-64 quantized base + the exported adapter."""
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load_model, quantize_model

    b = make_backend(mlx_tiny_tied_dir, quantization="nf4", targets=("q_proj", "v_proj", "up_proj"))
    train(b, batches(15, 2), lr=5e-2)
    b.export_adapter(tmp_path / "qadapter")
    model, config = load_model(mlx_tiny_tied_dir)
    model, _ = quantize_model(model, config, group_size=64, bits=4, mode="affine")
    load_adapters(model, str(tmp_path / "qadapter"))
    model.eval()
    b.model.eval()
    ids = mx.array(np.random.default_rng(1).integers(4, VOCAB, (1, 12)).astype(np.int32))
    np.testing.assert_allclose(np.array(model(ids)), np.array(b.model(ids)), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- cross-backend
def test_eval_loss_matches_torch_backend(mlx_tiny_dir):
    if importlib.util.find_spec("backends.torch_backend") is None:
        pytest.skip("backends/torch_backend.py not present")
    try:
        from backends.torch_backend import TorchBackend
    except Exception as exc:  # pragma: no cover - depends on the other backend
        pytest.skip(f"torch backend does not import: {exc}")
    batch = batches(21, 1, B=2, T=24)[0]
    t = TorchBackend()
    t.setup(ModelSettings(path=mlx_tiny_dir, dtype="float32", device="cpu"),
            LoraSettings(rank=4, alpha=8.0), OptimizerSettings(), 0)
    m = make_backend(mlx_tiny_dir, dtype="float32")
    lt, nt = t.eval_loss(batch)
    lm, nm = m.eval_loss(batch)
    assert nt == nm
    assert math.isclose(lt, lm, rel_tol=1e-3), (lt, lm)
