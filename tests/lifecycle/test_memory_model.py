"""The memory model (specc/estimate/memory.py): its activation term against what torch really saves for
backward on real Llama layers, and the parts, sources and batch choice it gives a plan."""
from __future__ import annotations

import numpy as np
import pytest

from specc.estimate.memory import Arch, Shape, estimate_memory, largest_batch, layer_bytes, lora_cast_bytes

ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True}


def config(**model):
    lora = model.pop("lora", {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": list(ALL7), "layers": None})
    batch, length = model.pop("batch_size", 8), model.pop("max_length", 2048)
    return {"model": {"quantization": "none", "dtype": "auto", "gradient_checkpointing": False, "lora": lora, **model},
            "training": {"batch_size": batch}, "data": {"max_length": length}}


# ----------------------------------------------------------------- against torch's saved tensors
def _saved_per_token(tmp_path, shape, layers, dtype, targets, dropout, gc):
    """Bytes of the tensors autograd keeps for backward during one decoder forward, per token (parameters
    excluded, each storage counted once): torch.autograd.graph.saved_tensors_hooks on the real backend."""
    torch = pytest.importorskip("torch")
    from backends.protocol import LoraSettings, ModelSettings, OptimizerSettings
    from backends.torch_backend import TorchBackend
    from tests.backends.test_torch_backend import make_batch
    from tests.tiny_llama import make_tiny_llama

    h, i, heads, kv = shape
    path = make_tiny_llama(tmp_path / f"m{h}-{i}-{layers}", tokenizer="words", vocab_size=512, hidden_size=h,
                           intermediate_size=i, num_layers=layers, num_heads=heads, num_kv_heads=kv)
    be = TorchBackend()
    be.setup(ModelSettings(path=path, device="cpu", dtype=dtype, attention="sdpa_varlen", gradient_checkpointing=gc),
             LoraSettings(rank=8, target_modules=targets, dropout=dropout), OptimizerSettings(), 0)
    params = {p.untyped_storage().data_ptr() for p in be.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    rng = np.random.default_rng(0)
    batch = make_batch([[list(rng.integers(4, 512, 64)), list(rng.integers(4, 512, 64))]] * 4, 128)
    rows, cols = np.nonzero(batch.loss_mask[:, 1:])
    inputs, _, _ = be._model_inputs(batch, batch.input_ids.astype(np.int64), rows, cols)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), be._lora_autocast():   # as _loss runs it
        be._decoder(**inputs, use_cache=False)
    return sum(seen.values()) / batch.n_tokens


@pytest.mark.parametrize("shape", [(256, 704, 8, 4), (320, 640, 10, 2)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("targets, dropout, gc", [(ALL7, 0.0, False), (("q_proj", "v_proj"), 0.0, False),
                                                  (ALL7, 0.1, False), (ALL7, 0.0, True)])
def test_layer_bytes_is_what_torch_saves_for_backward(tmp_path, shape, dtype, targets, dropout, gc):
    # One more layer costs exactly one full layer (the first layer saves less: nothing upstream needs gradients).
    measured = (_saved_per_token(tmp_path, shape, 3, dtype, targets, dropout, gc)
                - _saved_per_token(tmp_path, shape, 2, dtype, targets, dropout, gc))
    h, i, heads, kv = shape
    arch = Arch(h, 3, heads, kv, h // heads, i, 512, False)
    s = Shape("none", dtype, gc, "sdpa_varlen", 4096, 8, targets, None, dropout, 4, 128)
    tokens = 4 * 128
    predicted = (2 if dtype == "bfloat16" else 4) * h if gc else (layer_bytes(arch, s, device="cpu")
                                                                    + lora_cast_bytes(arch, s) / tokens)
    assert measured == pytest.approx(predicted, rel=0.01)


# ----------------------------------------------------------------- parts, sources, batch
def test_llama_1b_parts_follow_the_shape():
    arch = Arch.from_config(LLAMA_1B)
    assert arch.params == pytest.approx(1.236e9, rel=0.01)       # Llama-3.2-1B: 1.24B with tied embeddings
    bf16 = estimate_memory(config(), arch)
    nf4 = estimate_memory(config(quantization="nf4"), arch)
    assert bf16.parts["base weights"] == pytest.approx(arch.params * 2 / 2 ** 20, rel=1e-6)
    assert nf4.parts["base weights"] < 0.5 * bf16.parts["base weights"]
    assert nf4.parts["activations saved for backward"] == bf16.parts["activations saved for backward"]
    gc = estimate_memory(config(gradient_checkpointing=True), arch)
    assert gc.parts["activations saved for backward"] < 0.15 * bf16.parts["activations saved for backward"]
    dense = estimate_memory(config(attention="dense"), arch)
    assert dense.parts["dense attention mask"] == pytest.approx(8 * 2048 ** 2 * 2 / 2 ** 20)
    assert "dense attention mask" not in bf16.parts
    two = estimate_memory(config(), arch, batch_size=16)
    activations = bf16.parts["activations saved for backward"]
    assert two.parts["activations saved for backward"] == pytest.approx(2 * activations, rel=1e-3)
    assert bf16.parts["CUDA context"] == 500 and bf16.source == "formula"
    assert bf16.device_mb == pytest.approx(sum(bf16.parts.values()))
    # 16k tokens: one 4096-target chunk of a 128k vocabulary, not 16k × 128k float32 logits (8 GB)
    assert bf16.parts["loss chunk (logits) or backward transients"] < 4.5 * 1024
    small_chunk = estimate_memory(config(loss_chunk=1024), arch)
    assert small_chunk.train_peak_mb < bf16.train_peak_mb


def test_evaluation_is_estimated_and_the_peak_is_the_larger_of_the_two():
    """specc evaluates with the training batch size and the chunked loss (no [B, T, vocab] logits), so its
    evaluation stays under the training peak, gradient checkpointing or not; the estimate shows both."""
    arch = Arch.from_config(LLAMA_1B)
    for cfg in (config(), config(gradient_checkpointing=True, quantization="nf4"), config(loss_chunk=16384)):
        est = estimate_memory(cfg, arch)
        assert 0 < est.eval_peak_mb < est.train_peak_mb and est.peak_mb == est.train_peak_mb and not est.notes
        assert est.eval_peak_mb > est.parts["base weights"]


def test_largest_batch_stays_under_the_headroom():
    arch = Arch.from_config(LLAMA_1B)
    cfg = config(quantization="nf4")
    best, est = largest_batch(cfg, arch, 80, 0.70)
    assert best is not None and est.batch_size == best
    assert est.device_mb <= 0.70 * 80 * 1024 < estimate_memory(cfg, arch, best + 1).device_mb
    assert largest_batch(cfg, arch, 141, 0.70)[0] > best
    assert largest_batch(cfg, arch, 1, 0.70)[0] is None


def test_a_calibration_scales_the_formula_to_what_was_measured():
    arch = Arch.from_config(LLAMA_1B)
    cfg = config(batch_size=4)
    formula = estimate_memory(cfg, arch)
    measured = {"peak_mb": formula.peak_mb * 1.2, "batch_size": 4, "reserved_mb": formula.peak_mb * 1.2 * 1.05,
                "context_mb": 610.0}
    at_cal = estimate_memory(cfg, arch, calibration=measured, calibrated_shape=True)
    assert at_cal.source == "calibration" and at_cal.peak_mb == pytest.approx(measured["peak_mb"], rel=1e-9)
    assert at_cal.parts["CUDA context"] == 610.0
    assert at_cal.parts["allocator slack"] == pytest.approx(0.05 * measured["peak_mb"])
    bigger = estimate_memory(cfg, arch, batch_size=8, calibration=measured)
    assert bigger.source == "calibrated" and "× 1.2" in bigger.source_text.replace("× 1.20", "× 1.2")
    assert bigger.peak_mb > at_cal.peak_mb


def test_the_plan_finds_the_gpu_calibration_of_its_shape(tmp_path):
    from specc.estimate.calibrations import CalibrationFile
    from specc.estimate.memory import memory_calibration
    from specc.estimate.shape import shape_of_config

    cfg = dict(config(path="/m/1b", batch_size=4), backend="auto")
    cfg["training"].update(grad_accum=8)
    cfg["data"].update(packing=True)
    other = dict(cfg, training=dict(cfg["training"], batch_size=2))
    cal = CalibrationFile(tmp_path / "x.json", "della-h100")
    measured = {"peak_mb": 30_000.0, "batch_size": 2, "reserved_mb": 32_000.0}
    cal.entries["gpu"] = {"shape": shape_of_config(other).to_dict(), "measured": {"device": "cuda:0"}, "memory": measured}
    cal.entries["cpu"] = {"shape": shape_of_config(cfg).to_dict(), "measured": {"device": "cpu"},
                          "memory": {"peak_mb": 900.0, "batch_size": 4}}           # RSS: never a GPU figure
    found, exact = memory_calibration(cal, shape_of_config(cfg))
    assert found is measured and not exact
    assert memory_calibration(cal, shape_of_config(other)) == (measured, True)
    flex = dict(cfg, model=dict(cfg["model"], attention="flex"))                 # another kernel: another shape
    assert memory_calibration(cal, shape_of_config(flex)) == (None, False)
