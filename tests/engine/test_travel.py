"""specc/engine/travel.py: what must match for an adapter to travel, each mismatch named; the probe's tolerances."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from backends.layout import adapter_shape
from specc.engine import travel
from specc.errors import UserError
from tests.tiny_llama import make_tiny_llama

SPEC = {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "layers": None}


def found(rank=8, alpha=16.0, targets=("q_proj", "v_proj"), blocks=(0, 1)):
    return {"rank": rank, "alpha": alpha, "target_modules": sorted(targets), "blocks": list(blocks)}


def test_matching_lora_settings_pass():
    travel.check_lora(SPEC, found(), 2, Path("a"))
    travel.check_lora(dict(SPEC, layers=1), found(blocks=(1,)), 2, Path("a"))
    travel.check_lora(SPEC, found(alpha=None), 2, Path("a"))       # a checkpoint that never recorded alpha


def test_every_lora_mismatch_is_named_in_one_error():
    with pytest.raises(UserError) as err:
        travel.check_lora(SPEC, found(rank=4, alpha=8.0, targets=("q_proj", "k_proj"), blocks=(1,)), 2, Path("ad"))
    text = str(err.value)
    for part in ("ad does not match the spec's LoRA settings", "rank 4 (the spec says 8)", "alpha 8 (the spec says 16)",
                 "target modules k_proj, q_proj (the spec says q_proj, v_proj)",
                 "LoRA on blocks 1 (the spec's lora.layers=all means blocks 0, 1)"):
        assert part in text, text
    assert err.value.where == "model.lora" and "rank, alpha, target_modules, layers" in err.value.hint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    a = make_tiny_llama(root / "a")
    other_weights = make_tiny_llama(root / "b", seed=1)
    wider = make_tiny_llama(root / "c", hidden_size=32)
    retok = root / "d"
    shutil.copytree(a, retok)
    tok = json.loads((retok / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[3:5]                 # two byte tokens swap their ids
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (retok / "tokenizer.json").write_text(json.dumps(tok))
    resaved = root / "e"                                              # the same tokenizer, written again differently
    shutil.copytree(a, resaved)
    (resaved / "tokenizer.json").write_text(json.dumps(json.loads((a / "tokenizer.json").read_text()), indent=4))
    return {k: travel.base_identity(p) for k, p in
            {"a": a, "weights": other_weights, "wider": wider, "tokenizer": retok, "resaved": resaved}.items()}


def test_the_base_identity_tells_what_differs(models):
    a = models["a"]
    assert travel.check_base(a, a, Path("ck"), "m") == []
    assert travel.check_base(a, models["resaved"], Path("ck"), "m") == []
    assert travel.check_base(None, a, Path("ck"), "m") == []          # an older checkpoint recorded nothing
    warned = travel.check_base(a, models["weights"], Path("ck"), "m")
    assert len(warned) == 1 and "files differ" in warned[0]
    with pytest.raises(UserError, match=r"the base model differs: ck was trained on llama, 2 layers, 64 hidden, "
                                        r"259 vocab; m is llama, 2 layers, 32 hidden") as err:
        travel.check_base(a, models["wider"], Path("ck"), "m")
    assert err.value.where == "model.path" and "--resume never" in err.value.hint
    with pytest.raises(UserError, match="the tokenizer differs"):
        travel.check_base(a, models["tokenizer"], Path("ck"), "m")


def test_adapter_dimensions_are_checked_against_the_base():
    config = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 2}
    ok = {"model.layers.1.self_attn.k_proj.lora_A.weight": np.ones((2, 64)),
          "model.layers.1.self_attn.k_proj.lora_B.weight": np.ones((32, 2))}
    travel.check_dims(adapter_shape(ok), config, Path("ad"), "m")
    wide = {k: np.ones((v.shape[0], 128) if "lora_A" in k else v.shape) for k, v in ok.items()}
    with pytest.raises(UserError, match=r"ad was trained on a different base model: its "
                                        r"model.layers.1.self_attn.k_proj maps 128 -> 32, in m it maps 64 -> 32"):
        travel.check_dims(adapter_shape(wide), config, Path("ad"), "m")
    deep = {k.replace("layers.1", "layers.5"): v for k, v in ok.items()}
    with pytest.raises(UserError, match="has LoRA on block 5, and m has 2 blocks"):
        travel.check_dims(adapter_shape(deep), config, Path("ad"), "m")


def test_probe_tolerance_depends_on_what_differs():
    torch32 = {"backend": "torch", "device": "cpu", "dtype": "float32", "quantization": "none"}
    assert travel.probe_tolerance(torch32, torch32) == travel.SAME
    assert travel.probe_tolerance(torch32, dict(torch32, backend="mlx")) == travel.FLOAT32
    assert travel.probe_tolerance(torch32, dict(torch32, device="cuda")) == travel.FLOAT32
    assert travel.probe_tolerance(torch32, dict(torch32, backend="mlx", quantization="nf4")) == travel.LOSSY
    assert travel.probe_tolerance(dict(torch32, dtype="bfloat16"), dict(torch32, dtype="bfloat16", device="gpu")) \
        == travel.LOSSY


def test_the_probe_batch_is_fixed():
    a, b = travel.probe_batch(259), travel.probe_batch(259)
    assert np.array_equal(a.input_ids, b.input_ids) and a.input_ids.max() < 259 and a.n_target_tokens == 63
