"""TorchBackend on a real (tiny, random) Llama: real peft LoRA, real bitsandbytes NF4, real files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from backends.protocol import Batch, LoraSettings, ModelSettings, OptimizerSettings  # noqa: E402
from backends.torch_backend import TorchBackend  # noqa: E402
from specc.errors import UserError  # noqa: E402

torch.set_num_threads(1)  # deterministic kernels choice and no fight over the shared cores


def _bnb_cpu_ok() -> bool:
    try:
        import bitsandbytes  # noqa: F401
        return True
    except Exception:
        return False


needs_bnb = pytest.mark.skipif(not _bnb_cpu_ok(), reason="bitsandbytes not importable")


def make_batch(docs_per_row: list[list[list[int]]], T: int, prompt_len: dict | None = None) -> Batch:
    """Pack documents into rows of length T exactly as the engine's Batch contract describes."""
    B = len(docs_per_row)
    ids = np.zeros((B, T), np.int64)
    seg = np.zeros((B, T), np.int32)
    pos = np.zeros((B, T), np.int32)
    lm = np.zeros((B, T), np.float32)
    for b, docs in enumerate(docs_per_row):
        t = 0
        for k, doc in enumerate(docs, start=1):
            n = len(doc)
            ids[b, t:t + n] = doc
            seg[b, t:t + n] = k
            pos[b, t:t + n] = np.arange(n)
            lm[b, t + 1:t + n] = 1.0  # every token but a document's first is a target
            t += n
        assert t <= T
    return Batch(input_ids=ids, loss_mask=lm, segment_ids=seg, position_ids=pos)


def doc(seed: int, n: int) -> list[int]:
    return list(np.random.default_rng(seed).integers(3, 259, size=n))


def new_backend(model_dir: Path, *, quant="none", dropout=0.0, layers=None, rank=4, seed=0,
                gc=False, clip=1.0, targets=("q_proj", "v_proj")) -> TorchBackend:
    be = TorchBackend()
    be.setup(ModelSettings(path=model_dir, quantization=quant, device="cpu", gradient_checkpointing=gc),
             LoraSettings(rank=rank, alpha=8.0, dropout=dropout, target_modules=targets, layers=layers),
             OptimizerSettings(weight_decay=0.01, grad_clip=clip), seed)
    return be


def logits_of(be: TorchBackend, batch: Batch):
    mask, pos = be._attention_inputs(batch)
    with torch.no_grad():
        be.model.eval()
        out = be.model(input_ids=torch.from_numpy(batch.input_ids), attention_mask=mask, position_ids=pos).logits
        be.model.train()
    return out


def train(be: TorchBackend, batches: list[list[Batch]], lr=5e-2) -> list[float]:
    losses = []
    for micro in batches:
        total = sum(b.n_target_tokens for b in micro)
        for b in micro:
            loss, _ = be.forward_backward(b, 1.0 / total)
            losses.append(loss)
        res = be.optimizer_step(lr)
        assert res.applied
        losses.append(res.grad_norm)
    return losses


def step_batches(n_steps: int, seed: int = 0) -> list[list[Batch]]:
    out = []
    for s in range(n_steps):
        a = make_batch([[doc(seed + 100 * s, 9), doc(seed + 100 * s + 1, 11)], [doc(seed + 100 * s + 2, 14)]], 24)
        b = make_batch([[doc(seed + 100 * s + 3, 6), doc(seed + 100 * s + 4, 7), doc(seed + 100 * s + 5, 5)]], 20)
        out.append([a, b])
    return out


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
    return new_backend(tiny_llama_dir)


# ---------------------------------------------------------------- model directory checks
def test_missing_dir_lists_parent(tmp_path):
    (tmp_path / "llama-3b").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError) as ei:
        TorchBackend().setup(ModelSettings(path=tmp_path / "llama-3B"), LoraSettings(), OptimizerSettings(), 0)
    text = str(ei.value)
    assert "does not exist" in text and "llama-3b/" in text and "notes.txt" in text


@pytest.mark.parametrize("drop, expect", [
    ("config.json", "missing config.json"),
    ("model.safetensors", "missing weights"),
    ("tokenizer.json", "a tokenizer"),
])
def test_broken_dir_says_what_was_found(tmp_path, tiny_llama_dir, drop, expect):
    d = tmp_path / "m"
    d.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.name != drop and not (drop == "tokenizer.json" and f.name.startswith(("tokenizer", "special"))):
            (d / f.name).symlink_to(f)
    with pytest.raises(UserError) as ei:
        new_backend(d)
    text = str(ei.value)
    assert expect in text and "found:" in text
    assert str(d) in text


def test_corrupt_weights_are_a_user_error(tmp_path, tiny_llama_dir):
    d = tmp_path / "m"
    d.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.name != "model.safetensors":
            (d / f.name).symlink_to(f)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="could not load the model"):
        new_backend(d)


def test_bad_settings_are_user_errors(tiny_llama_dir):
    with pytest.raises(UserError, match="lora.layers"):
        new_backend(tiny_llama_dir, layers=5)
    with pytest.raises(UserError, match="LoRA"):
        new_backend(tiny_llama_dir, targets=("no_such_proj",))
    with pytest.raises(UserError, match="quantization"):
        new_backend(tiny_llama_dir, quant="int3")


# ---------------------------------------------------------------- setup facts
def test_describe_and_param_counts(tiny_llama_dir):
    be = new_backend(tiny_llama_dir, layers=1, rank=4)
    d = be.describe()
    # q_proj 64->64, v_proj 64->32 (GQA), last block only: A is r x 64, B is out x r.
    assert d["params_trainable"] == 4 * 64 + 64 * 4 + 4 * 64 + 32 * 4
    names = [n for n, _ in be.trainable]
    assert all(".layers.1." in n for n in names) and len(names) == 4
    assert d["device"] == "cpu" and d["dtype"] == "float32" and d["quantization"] == "none"
    assert d["attn_implementation"] in ("sdpa", "eager")
    assert d["params_total"] > d["params_trainable"] > 0
    mem = be.memory()
    assert mem.source == "rss" and mem.peak_mb >= mem.current_mb > 0


def test_fresh_adapter_is_the_base_model_and_init_is_seeded(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    be = new_backend(tiny_llama_dir, seed=3)
    again = new_backend(tiny_llama_dir, seed=3)
    other = new_backend(tiny_llama_dir, seed=4)
    s1, s2, s3 = be.state(), again.state(), other.state()
    a_keys = [k for k in s1 if "lora_A" in k]
    assert a_keys and all(np.array_equal(s1[k], s2[k]) for k in s1 if k.startswith("adapter/"))
    assert not all(np.array_equal(s1[k], s3[k]) for k in a_keys)
    assert all(not s1[k].any() for k in s1 if "lora_B" in k)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True).eval()
    batch = make_batch([[doc(1, 12)]], 12)
    with torch.no_grad():
        ref = base(input_ids=torch.from_numpy(batch.input_ids)).logits
    torch.testing.assert_close(logits_of(be, batch), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- attention / loss
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_do_not_attend_across(tiny_llama_dir, attn):
    be = new_backend(tiny_llama_dir)
    be.model.get_base_model().set_attn_implementation(attn)
    d1, d2 = doc(10, 7), doc(11, 9)
    packed = make_batch([[d1, d2]], 20)          # d1 | d2 | 4 padding
    alone = make_batch([[d2]], 9)
    lp, la = logits_of(be, packed), logits_of(be, alone)
    torch.testing.assert_close(lp[0, 7:16], la[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(lp[0, :7], logits_of(be, make_batch([[d1]], 7))[0], rtol=0, atol=1e-5)
    # The check is sensitive: plain causal attention (no segment mask) does leak d1 into d2.
    with torch.no_grad():
        be.model.eval()
        leaky = be.model(input_ids=torch.from_numpy(packed.input_ids),
                         position_ids=torch.from_numpy(packed.position_ids.astype(np.int64)),
                         attention_mask=torch.ones(1, 20, dtype=torch.long)).logits
    assert (leaky[0, 7:16] - la[0]).abs().max() > 1e-3
    # And the loss of a packed row is the sum of the documents' losses.
    l_packed = be.eval_loss(packed)
    l1, l2 = be.eval_loss(make_batch([[d1]], 7)), be.eval_loss(alone)
    assert l_packed[1] == l1[1] + l2[1] == 6 + 8
    assert l_packed[0] == pytest.approx(l1[0] + l2[0], rel=1e-5)


def test_padding_and_batch_rows_are_independent(backend):
    d1, d2, d3 = doc(20, 10), doc(21, 5), doc(22, 8)
    mixed = make_batch([[d1], [d2, d3]], 16)      # row 0: one doc + padding (fast path), row 1: packed
    assert backend._attention_inputs(make_batch([[d1]], 16))[0] is None   # no mask needed
    assert backend._attention_inputs(mixed)[0] is not None
    lm = logits_of(backend, mixed)
    torch.testing.assert_close(lm[0, :10], logits_of(backend, make_batch([[d1]], 10))[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(lm[1, 5:13], logits_of(backend, make_batch([[d3]], 8))[0], rtol=0, atol=1e-5)
    padded = backend.eval_loss(make_batch([[d1]], 16))
    exact = backend.eval_loss(make_batch([[d1]], 10))
    assert padded[1] == exact[1] == 9
    assert padded[0] == pytest.approx(exact[0], rel=1e-6)


def test_trailing_padding_is_trimmed_without_changing_the_loss(backend):
    docs = [[doc(25, 6), doc(26, 5)], [doc(27, 9)]]
    tight, wide = make_batch(docs, 11), make_batch(docs, 40)
    assert backend._trim(wide).input_ids.shape == (2, 11)
    assert backend._trim(tight) is tight
    assert backend.eval_loss(wide) == backend.eval_loss(tight)
    assert backend.forward_backward(wide, 1.0) == backend.forward_backward(tight, 1.0)
    backend.zero_grad()


def test_mask_is_additive_in_model_dtype_and_cached(backend):
    b = make_batch([[doc(1, 4), doc(2, 3)]], 8)
    m1, pos = backend._attention_inputs(b)
    m2, _ = backend._attention_inputs(make_batch([[doc(5, 4), doc(6, 3)]], 8))
    assert m1 is m2  # same segment layout, same mask object
    assert m1.shape == (1, 1, 8, 8) and m1.dtype == torch.float32
    allowed = (m1[0, 0] == 0).int().tolist()
    assert allowed[3] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert allowed[5] == [0, 0, 0, 0, 1, 1, 0, 0]
    assert allowed[7] == [0, 0, 0, 0, 0, 0, 0, 1]   # padding only sees itself: no NaN rows
    assert pos.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]


def test_loss_matches_reference_cross_entropy(backend):
    batch = make_batch([[doc(30, 12)], [doc(31, 6), doc(32, 6)]], 14)
    lm = batch.loss_mask.copy()
    lm[0, 1:5] = 0.0                       # a "prompt" that is not trained on
    batch = Batch(batch.input_ids, lm, batch.segment_ids, batch.position_ids)
    logits = logits_of(backend, batch)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                           torch.from_numpy(batch.input_ids[:, 1:]).reshape(-1), reduction="none")
    ref = float((ce * torch.from_numpy(lm[:, 1:]).reshape(-1)).sum())
    loss, n = backend.eval_loss(batch)
    assert n == int(lm.sum()) == 11 - 4 + 5 + 5
    assert loss == pytest.approx(ref, rel=1e-5)
    # the full-logits path (used for heads that are not plain linear layers) agrees
    backend._plain_head = False
    try:
        assert backend.eval_loss(batch)[0] == pytest.approx(loss, rel=1e-5)
    finally:
        backend._plain_head = True
    empty = Batch(batch.input_ids, np.zeros_like(lm), batch.segment_ids, batch.position_ids)
    assert backend.forward_backward(empty, 1.0) == (0.0, 0)
    assert all(p.grad is None for p in backend.params)


def test_accumulation_equals_one_big_batch(tiny_llama_dir):
    r0, r1 = [doc(40, 9), doc(41, 6)], [doc(42, 15)]
    a = new_backend(tiny_llama_dir)
    big = make_batch([r0, r1], 16)
    a.forward_backward(big, 1.0 / big.n_target_tokens)
    ga = [p.grad.clone() for p in a.params]
    b = new_backend(tiny_llama_dir)
    m0, m1 = make_batch([r0], 16), make_batch([r1], 16)
    total = m0.n_target_tokens + m1.n_target_tokens
    assert total == big.n_target_tokens
    b.forward_backward(m0, 1.0 / total)
    b.forward_backward(m1, 1.0 / total)
    for x, y in zip(ga, [p.grad for p in b.params]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- optimizer
def test_training_lowers_loss_and_eval_restores_train_mode(tiny_llama_dir):
    be = new_backend(tiny_llama_dir, dropout=0.1)
    batch = make_batch([[doc(50, 16)], [doc(51, 16)]], 16)
    first = be.eval_loss(batch)[0]
    assert be.model.training
    assert be.eval_loss(batch)[0] == first           # dropout is off in eval: deterministic
    for _ in range(15):
        be.forward_backward(batch, 1.0 / batch.n_target_tokens)
        res = be.optimizer_step(3e-2)
        assert res.applied and res.grad_norm > 0
    assert be.eval_loss(batch)[0] < first * 0.9
    assert be.model.training and all(p.grad is None for p in be.params)


def test_nonfinite_gradient_skips_the_update(tiny_llama_dir):
    be = new_backend(tiny_llama_dir)
    batch = make_batch([[doc(60, 12)]], 12)
    train(be, [[batch]])
    before = be.state()
    be.forward_backward(batch, 1.0 / batch.n_target_tokens)
    be.params[0].grad[0, 0] = float("nan")
    res = be.optimizer_step(1e-2)
    assert not res.applied and not np.isfinite(res.grad_norm)
    after = be.state()
    assert all(p.grad is None for p in be.params)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before if not k.startswith("rng/"))


def test_grad_clip_scales_gradients(tiny_llama_dir):
    be = new_backend(tiny_llama_dir, clip=1e-3)
    batch = make_batch([[doc(70, 12)]], 12)
    be.forward_backward(batch, 1.0 / batch.n_target_tokens)
    seen = {}
    orig = be.optimizer.step

    def spy(*a, **k):
        seen["norm"] = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in be.params])))
        return orig(*a, **k)

    be.optimizer.step = spy
    res = be.optimizer_step(1e-2)
    assert res.applied and res.grad_norm > 1e-3
    assert seen["norm"] == pytest.approx(1e-3, rel=1e-3)


# ---------------------------------------------------------------- state / resume
@pytest.mark.parametrize("quant", ["none", pytest.param("nf4", marks=needs_bnb)])
def test_resume_is_bit_exact(tiny_llama_dir, quant):
    k, m = 2, 3
    batches = step_batches(k + m)
    ref = new_backend(tiny_llama_dir, quant=quant, dropout=0.2)
    ref_losses = train(ref, batches)
    ref_state = ref.state()

    first = new_backend(tiny_llama_dir, quant=quant, dropout=0.2)
    losses = train(first, batches[:k])
    saved = first.state()
    assert all(isinstance(v, np.ndarray) for v in saved.values())
    assert saved["rng/torch_cpu"].dtype == np.uint8
    assert {"optim/0/exp_avg", "optim/0/exp_avg_sq", "optim/0/step"} <= saved.keys()
    del first
    torch.manual_seed(12345)                      # whatever happened to the RNG in between
    second = new_backend(tiny_llama_dir, quant=quant, dropout=0.2)
    second.load_state({k_: v.copy() for k_, v in saved.items()})
    losses += train(second, batches[k:])

    assert losses == ref_losses                    # identical floats, not approximately
    for (name, p), (_, q) in zip(ref.trainable, second.trainable):
        assert torch.equal(p, q), name
    end = second.state()
    assert end.keys() == ref_state.keys()
    assert all(np.array_equal(end[k_], ref_state[k_]) for k_ in end)
    # dropout really is on: the same step twice from the same weights but another RNG differs
    third = new_backend(tiny_llama_dir, quant=quant, dropout=0.2)
    s = dict(saved)
    torch.manual_seed(999)
    s["rng/torch_cpu"] = torch.get_rng_state().numpy()
    third.load_state(s)
    assert train(third, batches[k:k + 1]) != losses[len(losses) - 3 * m: len(losses) - 3 * m + 3]


def test_load_adapter_weights_only(tiny_llama_dir):
    a = new_backend(tiny_llama_dir)
    train(a, step_batches(2))
    st = a.state()
    b = new_backend(tiny_llama_dir)
    b.load_adapter_weights(st)
    for (_, p), (_, q) in zip(a.trainable, b.trainable):
        assert torch.equal(p, q)
    assert not b.optimizer.state
    with pytest.raises(UserError, match="different LoRA settings"):
        new_backend(tiny_llama_dir, rank=2).load_adapter_weights(st)
    with pytest.raises(UserError, match="different LoRA settings"):
        new_backend(tiny_llama_dir, layers=1).load_adapter_weights(st)


# ---------------------------------------------------------------- export
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft on transformers 5
def test_export_adapter_loads_in_peft_with_same_logits(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    be = new_backend(tiny_llama_dir, targets=("q_proj", "v_proj", "down_proj"))
    train(be, step_batches(3), lr=1e-1)
    assert any(np.abs(v).max() > 0 for k, v in be.state().items() if "lora_B" in k)
    out = tmp_path / "adapter"
    be.export_adapter(out)
    assert (out / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(Path(tiny_llama_dir).resolve())
    assert Path(cfg["base_model_name_or_path"]).is_absolute()

    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"], local_files_only=True)
    loaded = PeftModel.from_pretrained(base, out).eval()
    batch = make_batch([[doc(80, 14)]], 14)
    with torch.no_grad():
        got = loaded(input_ids=torch.from_numpy(batch.input_ids)).logits
    want = logits_of(be, batch)
    base_logits = logits_of(new_backend(tiny_llama_dir), batch)
    assert (want - base_logits).abs().max() > 1e-3    # the adapter changes the model...
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)   # ...and the export carries exactly that


# ---------------------------------------------------------------- options
def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama_dir):
    batch = make_batch([[doc(90, 8), doc(91, 8)]], 16)
    grads = []
    for gc in (False, True):
        be = new_backend(tiny_llama_dir, gc=gc)
        be.forward_backward(batch, 1.0 / batch.n_target_tokens)
        grads.append([p.grad.clone() for p in be.params])
    assert be.describe()["gradient_checkpointing"] is True
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)


@needs_bnb
def test_nf4_qlora_on_cpu(tiny_llama_dir):
    import bitsandbytes as bnb

    be = new_backend(tiny_llama_dir, quant="nf4")
    d = be.describe()
    assert d["quantization"] == "nf4"
    assert d["quantization_details"]["quant_type"] == "nf4" and d["quantization_details"]["double_quant"]
    hf = be.model.get_base_model()
    q = hf.model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, bnb.nn.Linear4bit) and q.base_layer.weight.dtype == torch.uint8
    assert all(p.dtype == torch.float32 for p in be.params)
    ref = new_backend(tiny_llama_dir)
    assert d["params_total"] == ref.describe()["params_total"]
    assert d["params_trainable"] == ref.describe()["params_trainable"]
    batch = make_batch([[doc(95, 16)], [doc(96, 9), doc(97, 7)]], 16)
    first = be.eval_loss(batch)[0]
    # quantized, yet close to the float model
    assert first == pytest.approx(ref.eval_loss(batch)[0], rel=0.05)
    for _ in range(10):
        be.forward_backward(batch, 1.0 / batch.n_target_tokens)
        assert be.optimizer_step(3e-2).applied
    assert be.eval_loss(batch)[0] < first * 0.9
