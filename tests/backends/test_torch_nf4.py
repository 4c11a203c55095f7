"""NF4 QLoRA on CPU trains on the right gradients on every CPU, and the guard stops a run that would not.

bitsandbytes repacks Linear4bit weights into a CPU inference layout (no backward) on the first
eval-mode call when the CPU has AVX-512 BF16 (`Linear4bit.support_avx512bf16_for_cpu`). These tests
force that capability flag, so a CPU without the instruction set exercises the same path.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from backends.torch_nf4 import AUTOGRAD_WARNING, check_gradient_flow, quantized_layers  # noqa: E402
from specc.errors import UserError  # noqa: E402
from tests.backends.test_torch_backend import doc, make_batch, new_backend  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# NF4 dequantizes to float32 before the matmul, so the quantized model and a float model holding the
# dequantized weights compute the same function; only summation order differs (measured: < 1e-6).
REFERENCE_RTOL = 1e-4


@pytest.fixture
def avx512_flag(monkeypatch):
    """Make every Linear4bit built from now on believe the CPU has AVX-512 BF16."""
    import bitsandbytes.nn.modules as modules

    monkeypatch.setattr(modules, "has_avx512bf16", lambda: True)


def _grads(be, batch):
    be.zero_grad()
    be.forward_backward(batch, 1.0 / batch.n_target_tokens)
    out = {n: p.grad.detach().clone() for n, p in be.trainable}
    be.zero_grad()
    return out


def _batch():
    return make_batch([[doc(95, 16)], [doc(96, 9), doc(97, 7)]], 16)


def test_evaluation_keeps_the_trainable_layout(tiny_llama_dir, avx512_flag):
    be = new_backend(tiny_llama_dir, quant="nf4", targets=TARGETS)
    layers = quantized_layers(be.model)
    assert layers and not any(m.support_avx512bf16_for_cpu for _, m in layers)
    assert "disabled on" in be.describe()["quantization_details"]["cpu_inference_repacking"]
    batch = _batch()
    before = _grads(be, batch)
    be.eval_loss(batch)                       # the call that used to repack every layer in place
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for _, m in layers)
    after = _grads(be, batch)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # the earliest layer's LoRA B really receives gradient through the later quantized layers
    first = next(n for n in after if "layers.0." in n and "lora_B" in n)
    assert float(after[first].abs().max()) > 0


def test_nf4_gradient_matches_the_dequantized_float32_reference(tiny_llama_dir, avx512_flag):
    q = new_backend(tiny_llama_dir, quant="nf4", targets=TARGETS)
    batch = _batch()
    q.eval_loss(batch)                        # after an evaluation pass, as in a run
    ref = new_backend(tiny_llama_dir, targets=TARGETS)
    float_modules = dict(ref.model.named_modules())
    with torch.no_grad():
        for name, layer in quantized_layers(q.model):
            w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
            float_modules[name].weight.copy_(w)
    got, want = _grads(q, batch), _grads(ref, batch)
    assert got.keys() == want.keys() and len(got) == 2 * len(TARGETS) * 2
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=REFERENCE_RTOL, atol=1e-7, msg=name)
    assert q.eval_loss(batch)[0] == pytest.approx(ref.eval_loss(batch)[0], rel=REFERENCE_RTOL)


def test_guard_stops_a_run_whose_layers_were_repacked(tiny_llama_dir):
    be = new_backend(tiny_llama_dir, quant="nf4")
    name, layer = next((n, m) for n, m in quantized_layers(be.model) if "q_proj" in n)
    # What bitsandbytes does to a layer in eval mode on an AVX-512 BF16 CPU.
    layer.weight.data, layer.weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state)
    with pytest.raises(UserError) as err:
        check_gradient_flow(be.model, "after the first evaluation")
    text = str(err.value)
    assert f"bitsandbytes {bnb.__version__}" in text and name in text and "wrong gradients" in text
    assert "quantization: none" in err.value.hint


def test_guard_catches_a_layer_that_passes_no_gradient(tiny_llama_dir, monkeypatch):
    """A quantized base whose backward is lost (what an op without an autograd kernel does) is found."""
    be = new_backend(tiny_llama_dir, quant="nf4")
    name, layer = next((n, m) for n, m in quantized_layers(be.model) if "layers.0.self_attn.q_proj" in n)
    forward = layer.forward
    monkeypatch.setattr(layer, "forward", lambda x: forward(x).detach())
    with pytest.raises(UserError, match="no gradient reaches the input of quantized layer .*layers.0.self_attn.q_proj"):
        check_gradient_flow(be.model, "after setup")


def test_guard_catches_an_autograd_warning(tiny_llama_dir, monkeypatch):
    be = new_backend(tiny_llama_dir, quant="nf4")
    _, layer = quantized_layers(be.model)[0]
    forward = layer.forward

    def warned(x):
        import warnings

        warnings.warn("bitsandbytes::gemv_4bit: an autograd kernel was not registered to the Autograd key(s)")
        return forward(x)

    monkeypatch.setattr(layer, "forward", warned)
    with pytest.raises(UserError, match="without an autograd kernel"):
        check_gradient_flow(be.model, "after setup")


def _quickstart_nf4(tmp_path, steps: int | None = None) -> Path:
    text = (REPO / "specs" / "quickstart.yaml").read_text()
    text = text.replace("quantization: none", "quantization: nf4").replace("experiment: quickstart", "experiment: qs-nf4")
    if steps:
        text = text.replace("max_steps: 200", f"max_steps: {steps}")
    spec = tmp_path / "quickstart-nf4.yaml"
    spec.write_text(text)
    return spec


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="needs a CPU with AVX-512 BF16 (the real repacking kernel)")
def test_a_run_on_a_repacking_cpu_is_stopped_by_the_guard(tmp_path):
    """End to end where bitsandbytes really repacks: the flag switched back on after setup is caught at the first eval."""
    from dataclasses import replace

    from rich.console import Console

    from backends.torch_backend import TorchBackend
    from specc.engine.config import load_run_config
    from specc.engine.loop import RunOptions, train
    from specc.engine.session import open_session

    class Repacking(TorchBackend):
        def setup(self, *a, **k):
            super().setup(*a, **k)
            for _, m in quantized_layers(self.model):
                m.support_avx512bf16_for_cpu = True

    cfg = replace(load_run_config(_quickstart_nf4(tmp_path, steps=20), None), output_dir=tmp_path / "run")
    session = open_session(cfg, RunOptions(), Console(file=io.StringIO()), backend=Repacking())
    with pytest.raises(UserError, match="CPU inference layout after the first evaluation"):
        train(session)
    assert not (tmp_path / "run" / "checkpoints").exists()   # no step was trained on wrong gradients


@pytest.mark.integration
def test_the_quickstart_learns_with_nf4(tmp_path):
    """`specc run` of the quickstart with quantization: nf4: no autograd warning, and it learns."""
    spec = _quickstart_nf4(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-m", "specc", "run", str(spec)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert AUTOGRAD_WARNING not in log
    summary = json.loads((tmp_path / "runs" / "qs-nf4" / "main" / "summary.json").read_text())
    assert summary["device"]["quantization"] == "nf4"
    assert summary["best_val_loss"] < 0.5, summary["best_val_loss"]
