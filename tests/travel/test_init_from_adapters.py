"""--init-from any adapter: a PEFT directory written by peft itself, an mlx-lm adapters directory written by
mlx-lm's own functions, on either backend; and clear refusals where an adapter cannot travel.

"The same adapter" is checked two ways: the backend holds exactly the file's weights (canonical layout),
and its loss on one fixed sequence matches the loss the adapter's own library computes (peft on
transformers, mlx-lm): within 1e-5 relative on the same library family, 1e-4 across (measured ~1e-7).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from backends.layout import canonical_adapter, read_adapter_dir
from specc.engine import travel
from tests.tiny_llama import make_tiny_llama
from tests.travel.runs import quickstart, specc

pytestmark = pytest.mark.integration

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MLX_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def base() -> Path:
    from specc.data.sources import resolve_model_path

    return resolve_model_path("builtin:tiny-llama")


def _peft(base: Path, out: Path, r: int = 8, alpha: int = 16, targets=TARGETS) -> Path:
    """An adapter as peft writes it (save_pretrained), with lora_B drawn so that it changes the model."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                           LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def peft_dir(base, tmp_path_factory) -> Path:
    return _peft(base, tmp_path_factory.mktemp("peft") / "adapter")


@pytest.fixture(scope="module")
def mlx_dir(base, tmp_path_factory) -> Path:
    """An adapter as `mlx_lm lora` saves one: its LoRA layers, adapters.safetensors, adapter_config.json."""
    mx = pytest.importorskip("mlx.core")
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model, save_config

    out = tmp_path_factory.mktemp("mlx") / "adapters"
    out.mkdir()
    model, _ = load_model(base)
    model.freeze()
    params = {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": MLX_KEYS}
    mx.random.seed(3)
    linear_to_lora_layers(model, 2, params)
    model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.05, model.trainable_parameters()))
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    save_config({"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": params, "model": str(base)},
                out / "adapter_config.json")
    return out


def _session(tmp: Path, backend: str, init_from: Path, **lora):
    from specc.engine.config import load_run_config
    from specc.engine.loop import RunOptions
    from specc.engine.session import open_session

    cfg = load_run_config(quickstart(tmp, steps=20, experiment="init"), None)
    cfg = replace(cfg, output_dir=tmp / "runs" / "init" / backend)
    return open_session(cfg, RunOptions(backend=backend, init_from=init_from), Console(file=open("/dev/null", "w")))


def _library_loss(kind: str, base: Path, adapter: Path, ids: np.ndarray) -> float:
    """Mean next-token cross-entropy of `ids` as the adapter's own library computes it."""
    if kind == "peft":
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                          str(adapter)).eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(ids)).logits[0, :-1]
            return float(torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(ids[0, 1:])))
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    model, _ = load(str(base), adapter_path=str(adapter))
    logits = model(mx.array(ids))[0, :-1].astype(mx.float32)
    return float(nn.losses.cross_entropy(logits, mx.array(ids[0, 1:]), reduction="mean"))


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("kind", ["peft", "mlx"])
def test_init_from_an_adapter_directory_of_either_library(both_backends, base, peft_dir, mlx_dir, tmp_path,
                                                          backend, kind):
    adapter = peft_dir if kind == "peft" else mlx_dir
    s = _session(tmp_path, backend, adapter)
    try:
        held = canonical_adapter({k[len("adapter/"):]: v for k, v in
                                  s.backend.to_canonical(s.backend.state()).items() if k.startswith("adapter/")})
        written = read_adapter_dir(adapter).weights
        assert sorted(held) == sorted(written) and all(np.array_equal(held[k], written[k]) for k in written)
        batch = travel.probe_batch(int(s.base["arch"]["vocab_size"]))
        ours = travel.probe(s.backend, batch)["loss"]
        assert s.state.history[-1]["kind"] == "init_from" and s.state.history[-1]["from"] == str(adapter)
    finally:
        s.close()
    theirs = _library_loss(kind, base, adapter, batch.input_ids)
    same_family = (kind == "peft") == (backend == "torch")
    assert ours == pytest.approx(theirs, rel=1e-5 if same_family else 1e-4), (ours, theirs)


def test_specc_run_init_from_a_peft_directory(both_backends, peft_dir, tmp_path):
    spec = quickstart(tmp_path, steps=20, experiment="init")
    r = specc("run", spec, "--backend", "torch", "--init-from", peft_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"initialised the adapter from {peft_dir}" in r.stderr
    s = json.loads((tmp_path / "runs/init/main/summary.json").read_text())
    assert s["status"] == "completed" and s["history"][0]["kind"] == "init_from"
    assert s["history"][0]["from_backend"] == "a peft adapter"


def test_lora_settings_that_do_not_match_are_each_named(both_backends, base, tmp_path):
    bad = _peft(base, tmp_path / "r4", r=4, alpha=8, targets=["q_proj", "v_proj"])
    spec = quickstart(tmp_path, steps=20, experiment="init")
    r = specc("run", spec, "--backend", "torch", "--init-from", bad, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for part in ("does not match the spec's LoRA settings", "rank 4 (the spec says 8)", "alpha 8 (the spec says 16)",
                 "target modules q_proj, v_proj (the spec says down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, "
                 "v_proj)", "hint:"):
        assert part in r.stderr, r.stderr
    assert not (tmp_path / "runs/init/main").exists(), "nothing is written for a refused start (the lock file aside)"


@pytest.fixture(scope="module")
def trained(both_backends, tmp_path_factory) -> Path:
    """A short torch quickstart run (20 steps), to resume or start from on another base."""
    cwd = tmp_path_factory.mktemp("trained")
    r = specc("run", quickstart(cwd, steps=20, experiment="qs"), "--backend", "torch", cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd


def _on_base(trained: Path, tmp: Path, model: Path) -> Path:
    """A copy of the trained run whose spec now names another base model."""
    cwd = tmp / "copy"
    shutil.copytree(trained, cwd)
    text = (cwd / "qs.yaml").read_text().replace("path: builtin:tiny-llama", f"path: {model}")
    (cwd / "qs.yaml").write_text(text)
    return cwd


def _tree(root: Path) -> dict:
    """Every file under root but the run lock (it names the process that last held it)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".lock")}


def test_resuming_on_another_base_model_says_what_differs(trained, tmp_path):
    cwd = _on_base(trained, tmp_path, make_tiny_llama(tmp_path / "other-base", intermediate_size=64))
    before = _tree(cwd / "runs")
    r = specc("run", cwd / "qs.yaml", "--backend", "mlx", cwd=cwd)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "the base model differs" in r.stderr and "llama, 2 layers, 64 hidden, 572 vocab" in r.stderr
    assert "259 vocab" in r.stderr and "hint: point model.path at the base" in r.stderr
    assert _tree(cwd / "runs") == before, "nothing is overwritten"


def test_resuming_with_another_tokenizer_is_refused(trained, base, tmp_path):
    retok = tmp_path / "retokenized"
    shutil.copytree(base, retok)
    tok = json.loads((retok / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (retok / "tokenizer.json").write_text(json.dumps(tok))
    cwd = _on_base(trained, tmp_path, retok)
    before = _tree(cwd / "runs")
    r = specc("run", cwd / "qs.yaml", "--backend", "torch", cwd=cwd)
    assert r.returncode == 1 and "the tokenizer differs" in r.stderr, r.stderr[-3000:]
    assert _tree(cwd / "runs") == before


def test_init_from_onto_another_base_model_is_refused(trained, tmp_path):
    other = make_tiny_llama(tmp_path / "wide", hidden_size=32)
    spec = quickstart(tmp_path / "new", steps=20, experiment="other",
                      **{"path: builtin:tiny-llama": f"path: {other}"})
    r = specc("run", spec, "--backend", "torch", "--init-from", trained / "runs/qs/main", cwd=tmp_path / "new")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "was trained on a different base model" in r.stderr and "down_proj maps 256 -> 64, in" in r.stderr
    assert not (tmp_path / "new/runs/other/main").exists()
