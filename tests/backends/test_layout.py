"""backends/layout.py: the canonical names, the adapter directories of PEFT and mlx-lm, and what is refused.

numpy only (the files are real safetensors and JSON); the libraries' own loaders are tested on these
directories in tests/travel/.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from backends.layout import (
    AdapterShape,
    adapter_shape,
    canonical_adapter,
    canonical_name,
    check_canonical,
    is_canonical,
    mlx_name,
    read_adapter_dir,
    write_mlx,
    write_peft,
)
from specc.errors import UserError

MODULE = "model.layers.1.self_attn.q_proj"


def lora(blocks=(0, 1), targets=("self_attn.q_proj", "mlp.down_proj"), r=4, dims=(8, 12), seed=0):
    """Canonical weights: A [r, in], B [out, r], every target in every block."""
    rng = np.random.default_rng(seed)
    out = {}
    for b in blocks:
        for t in targets:
            n_in, n_out = dims if "q_proj" in t else dims[::-1]
            out[f"model.layers.{b}.{t}.lora_A.weight"] = rng.standard_normal((r, n_in)).astype(np.float32)
            out[f"model.layers.{b}.{t}.lora_B.weight"] = rng.standard_normal((n_out, r)).astype(np.float32)
    return out


@pytest.mark.parametrize("key", [
    f"base_model.model.{MODULE}.lora_A.default.weight",   # torch: peft's parameter name
    f"base_model.model.{MODULE}.lora_A.weight",           # a saved PEFT adapter
    f"{MODULE}.lora_a",                                    # mlx-lm
    f"{MODULE}.lora_A.weight",                             # canonical
])
def test_every_naming_has_one_canonical_name(key):
    assert canonical_name(key) == f"{MODULE}.lora_A.weight"


def test_mlx_weights_are_transposed_into_peft_orientation():
    a = np.arange(24, dtype=np.float32).reshape(8, 3)    # mlx-lm lora_a: [in, r]
    out = canonical_adapter({f"{MODULE}.lora_a": a, f"{MODULE}.lora_b": np.ones((3, 5), np.float32)})
    assert out[f"{MODULE}.lora_A.weight"].shape == (3, 8) and np.array_equal(out[f"{MODULE}.lora_A.weight"], a.T)
    assert out[f"{MODULE}.lora_B.weight"].shape == (5, 3)
    assert mlx_name(f"{MODULE}.lora_B.weight") == f"{MODULE}.lora_b"


@pytest.mark.parametrize("key", ["model.layers.0.mlp.down_proj.lora_magnitude_vector", "lm_head.weight",
                                 "base_model.model.model.embed_tokens.lora_embedding_A"])
def test_what_is_not_a_lora_pair_is_named(key):
    with pytest.raises(UserError, match="is not a LoRA A/B weight") as err:
        canonical_adapter({key: np.ones((2, 2), np.float32)})
    assert key in str(err.value)


def test_shape_of_an_adapter():
    shape = adapter_shape(lora(blocks=(2, 3)))
    assert shape == AdapterShape(4, {f"model.layers.{b}.{t}": d for b in (2, 3) for t, d in
                                     (("mlp.down_proj", (12, 8)), ("self_attn.q_proj", (8, 12)))},
                                 ("down_proj", "q_proj"), (2, 3))
    assert shape.rectangular()
    bad = lora()
    bad[f"{MODULE}.lora_B.weight"] = np.ones((12, 5), np.float32)
    with pytest.raises(UserError, match="lora_A of rank 4 and lora_B of rank 5"):
        adapter_shape(bad)
    del bad[f"{MODULE}.lora_B.weight"]
    with pytest.raises(UserError, match="has lora_A but not its partner"):
        adapter_shape(bad)


def test_a_canonical_state_is_checked_loudly():
    weights = lora()
    state = {f"adapter/{k}": v for k, v in weights.items()}
    state.update({f"optim/{k}/{m}": np.zeros_like(v) for k, v in weights.items() for m in ("exp_avg", "exp_avg_sq")})
    state["optim/step"] = np.asarray(3, np.int64)
    check_canonical(state)
    assert is_canonical(state) and not is_canonical({f"adapter/base_model.model.{k}": v for k, v in weights.items()})
    k = next(iter(weights))
    for broken, message in [
        ({**state, f"optim/{k}/exp_avg": np.zeros((1, 1), np.float32)}, "has shape"),
        ({x: v for x, v in state.items() if x != "optim/step"}, "has no optim/step"),
        ({**state, "optim/model.layers.9.q_proj.lora_A.weight/exp_avg": np.zeros(1)}, "not an AdamW moment"),
    ]:
        with pytest.raises(UserError, match=message):
            check_canonical(broken)


@pytest.mark.parametrize("fmt,write", [("peft", write_peft), ("mlx", write_mlx)])
def test_written_adapter_directories_read_back_exactly(tmp_path, fmt, write):
    weights = lora(blocks=(2, 3))
    write(tmp_path / fmt, weights, alpha=8.0, dropout=0.05, base_model="/models/base", n_blocks=4)
    back = read_adapter_dir(tmp_path / fmt)
    assert back.format == fmt and back.alpha == 8.0 and back.dropout == 0.05 and back.base_model == "/models/base"
    assert set(back.weights) == set(weights) and all(np.array_equal(back.weights[k], weights[k]) for k in weights)
    config = json.loads((tmp_path / fmt / "adapter_config.json").read_text())
    if fmt == "peft":
        assert (config["r"], config["lora_alpha"], config["layers_to_transform"]) == (4, 8.0, [2, 3])
        assert sorted(config["target_modules"]) == ["down_proj", "q_proj"]
    else:
        assert config["num_layers"] == 2 and config["lora_parameters"]["scale"] == 2.0
        assert sorted(config["lora_parameters"]["keys"]) == ["mlp.down_proj", "self_attn.q_proj"]


def test_what_an_mlx_lm_config_cannot_say_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"covers blocks \[0, 1\]; an mlx-lm adapter covers the last"):
        write_mlx(tmp_path / "m", lora(blocks=(0, 1)), alpha=8, dropout=0, base_model="b", n_blocks=4)
    ragged = lora()
    del ragged[f"{MODULE}.lora_A.weight"], ragged[f"{MODULE}.lora_B.weight"]
    with pytest.raises(UserError, match="not on every target"):
        write_peft(tmp_path / "p", ragged, alpha=8, dropout=0, base_model="b", n_blocks=2)
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("config,message", [
    ({"use_dora": True}, "DoRA"),
    ({"use_rslora": True}, "rank-stabilised"),
    ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
    ({"bias": "all"}, "bias='all'"),
    ({"peft_type": "IA3"}, "peft_type 'IA3'"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
])
def test_peft_features_specc_does_not_train_are_refused(tmp_path, config, message):
    write_peft(tmp_path, lora(), alpha=8, dropout=0, base_model="b", n_blocks=2)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    with pytest.raises(UserError, match=message):
        read_adapter_dir(tmp_path)


def test_not_an_adapter_directory_says_what_would_be(tmp_path):
    with pytest.raises(UserError, match="not an adapter directory") as err:
        read_adapter_dir(tmp_path)
    assert "adapter_model.safetensors" in err.value.hint
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="not an adapter directory") as err:
        read_adapter_dir(tmp_path)
    assert "adapter_model.bin" in err.value.hint and "safe_serialization=True" in err.value.hint
    (tmp_path / "adapters.safetensors").write_bytes(b"\x00" * 16)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "dora", "lora_parameters": {}}))
    with pytest.raises(UserError, match="fine_tune_type 'dora'"):
        read_adapter_dir(tmp_path)


def test_an_mlx_lm_adapter_written_as_mlx_lm_does_reads_as_peft_orientation(tmp_path):
    """keys as mlx-lm names them, lora_a [in, r]; scale 20 (mlx-lm's default) means alpha 20 * rank."""
    a, b = np.ones((8, 4), np.float32), np.full((4, 12), 2.0, np.float32)
    save_file({f"{MODULE}.lora_a": a, f"{MODULE}.lora_b": b}, str(tmp_path / "adapters.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0}}))
    got = read_adapter_dir(tmp_path)
    assert got.alpha == 80.0 and got.shape.rank == 4 and got.shape.layers == (1,) and got.shape.targets == ("q_proj",)
    assert np.array_equal(got.weights[f"{MODULE}.lora_A.weight"], a.T)
