"""The torch backend on CUDA: bf16 and NF4 steps, packed attention against the dense mask, bit-exact resume
for the same kernels, Liger and compile against the plain path, NVML gauges. Skipped without a CUDA device
(bench/gpu/run.sh runs them on one)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from backends.protocol import LoraSettings, ModelSettings, OptimizerSettings  # noqa: E402
from backends.torch_backend import TorchBackend  # noqa: E402
from tests.backends.test_torch_packed import TARGETS, packed_batches, randomise_adapters  # noqa: E402
from tests.backends.test_torch_backend import doc, make_batch, step_batches, train  # noqa: E402


def cuda_backend(model_dir, *, attention="auto", quant="none", dtype="auto", dropout=0.0, liger=False, compile=False,
                 chunk=4096):
    be = TorchBackend()
    be.setup(ModelSettings(path=model_dir, device="cuda", quantization=quant, dtype=dtype, attention=attention,
                           liger=liger, compile=compile, loss_chunk=chunk),
             LoraSettings(rank=4, alpha=8.0, dropout=dropout, target_modules=TARGETS), OptimizerSettings(), 0)
    return be


def grads_of(be, batch):
    be.zero_grad()
    loss, _ = be.forward_backward(batch, 1.0 / batch.n_target_tokens)
    return loss, [p.grad.detach().float().clone() for p in be.params]


def relative(x, y) -> float:
    return float((x - y).norm() / y.norm().clamp_min(1e-12))


def assert_close_to_plain(plain, other):
    """Loss and gradients of `other` (a fused or compiled path) within bf16 tolerance of the plain path."""
    for be in (plain, other):
        randomise_adapters(be)
    batch = packed_batches()[0]
    lp, gp = grads_of(plain, batch)
    lo, go = grads_of(other, batch)
    assert lo == pytest.approx(lp, rel=2e-2)
    assert all(relative(x, y) < 5e-2 for x, y in zip(go, gp))


def test_bf16_step_on_cuda_trains_and_reports(tiny_llama_dir):
    be = cuda_backend(tiny_llama_dir)
    d = be.describe()
    assert d["dtype"] == "bfloat16" and d["device"].startswith("cuda") and d["gpu"]
    from backends.torch_packed import _varlen_kernel

    # auto: the flash varlen kernel where this torch has it (2.9+), else the dense mask
    assert d["attention"]["mode"] == ("sdpa_varlen" if _varlen_kernel(torch) else "dense")
    assert d["lora_compute"].startswith("bfloat16 (autocast")
    batch = make_batch([[doc(1, 16), doc(2, 14)], [doc(3, 30)]], 32)
    first = be.eval_loss(batch)[0]
    for _ in range(10):
        be.forward_backward(batch, 1.0 / batch.n_target_tokens)
        assert be.optimizer_step(3e-2).applied
    assert be.eval_loss(batch)[0] < first * 0.9
    mem = be.memory()
    assert mem.source.startswith("torch.cuda") and mem.peak_mb > 0 and "cuda_reserved_mb" in mem.gauges


def test_nf4_step_on_cuda(tiny_llama_dir):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    be = cuda_backend(tiny_llama_dir, quant="nf4")
    d = be.describe()
    assert d["quantization_details"]["double_quant"] and d["quantization_details"]["compute_dtype"] == "bfloat16"
    q = be._hf().model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, bnb.nn.Linear4bit) and q.base_layer.weight.is_cuda
    batch = make_batch([[doc(4, 16)], [doc(5, 9), doc(6, 7)]], 16)
    first = be.eval_loss(batch)[0]
    for _ in range(10):
        be.forward_backward(batch, 1.0 / batch.n_target_tokens)
        assert be.optimizer_step(3e-2).applied
    assert be.eval_loss(batch)[0] < first * 0.9


@pytest.mark.parametrize("attention", ["sdpa_varlen", "flex"])
@pytest.mark.parametrize("dtype, loss_rel, grad_rel", [("float32", 1e-5, 1e-4), ("bfloat16", 2e-2, 5e-2)])
def test_packed_attention_equals_the_dense_mask_on_cuda(tiny_llama_dir, attention, dtype, loss_rel, grad_rel):
    dense = cuda_backend(tiny_llama_dir, attention="dense", dtype=dtype)
    other = cuda_backend(tiny_llama_dir, attention=attention, dtype=dtype)
    assert other.describe()["attention"]["mode"] == attention
    for be in (dense, other):
        randomise_adapters(be)
    for batch in packed_batches():
        ld, gd = grads_of(dense, batch)
        lo, go = grads_of(other, batch)
        assert lo == pytest.approx(ld, rel=loss_rel)
        for x, y in zip(go, gd):
            assert relative(x, y) < grad_rel


@pytest.mark.parametrize("attention", ["sdpa_varlen", "flex", "dense"])
def test_resume_is_bit_exact_on_cuda(tiny_llama_dir, attention):
    """Same kernels before and after the restart: the resumed run equals the uninterrupted one, bit for bit."""
    k, m = 2, 2
    batches = step_batches(k + m, seed=7)
    ref = cuda_backend(tiny_llama_dir, attention=attention, dropout=0.1)
    ref_losses = train(ref, batches)
    again = cuda_backend(tiny_llama_dir, attention=attention, dropout=0.1)
    assert train(again, batches) == ref_losses, "the kernels themselves are not deterministic run to run"
    first = cuda_backend(tiny_llama_dir, attention=attention, dropout=0.1)
    losses = train(first, batches[:k])
    saved = first.state()
    assert "rng/torch_cuda" in saved
    torch.manual_seed(99)
    second = cuda_backend(tiny_llama_dir, attention=attention, dropout=0.1)
    second.load_state({key: v.copy() for key, v in saved.items()})
    losses += train(second, batches[k:])
    assert losses == ref_losses
    end, want = second.state(), ref.state()
    assert end.keys() == want.keys() and all(np.array_equal(end[key], want[key]) for key in want)


def test_liger_kernels_match_the_plain_path(tiny_llama_dir):
    pytest.importorskip("liger_kernel")
    plain, liger = cuda_backend(tiny_llama_dir), cuda_backend(tiny_llama_dir, liger=True)
    assert liger.describe()["liger"] and liger.describe()["loss"].startswith("Liger")
    assert_close_to_plain(plain, liger)


def test_compiled_layers_match_on_cuda(tiny_llama_dir):
    plain, compiled = cuda_backend(tiny_llama_dir), cuda_backend(tiny_llama_dir, compile=True)
    assert_close_to_plain(plain, compiled)


def test_nvml_gauges_reach_the_metrics(tiny_llama_dir):
    pytest.importorskip("pynvml")
    be = cuda_backend(tiny_llama_dir)
    batch = make_batch([[doc(8, 30)]], 32)
    be.forward_backward(batch, 1.0 / batch.n_target_tokens)
    be.optimizer_step(1e-3)
    gauges = be.memory().gauges
    assert be.describe()["nvml"].startswith("nvidia-ml-py"), be.describe()["nvml"]
    assert 0 <= gauges["gpu_util"] <= 100 and gauges["gpu_mem_mb"] > 0 and gauges["cuda_reserved_mb"] > 0
