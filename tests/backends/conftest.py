"""A tiny random Llama in plain Hugging Face format, built locally (no downloads), for backend tests.

The directory holds exactly what a real checkpoint would: config.json, model.safetensors and a
fast-tokenizer (tokenizer.json + tokenizer_config.json + special_tokens_map.json). It is written
with numpy, `safetensors.numpy` and `tokenizers` only, so the MLX backend tests can use the same
fixture on a machine without torch; transformers and mlx-lm both load it as a LlamaForCausalLM.

Use the session fixtures `tiny_llama_dir` (fp32 weights, GQA, untied head) or call
`make_tiny_llama(path, ...)` to write a variant.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,          # GQA, so repeat_kv / grouped attention paths are exercised
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)
SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2; then the 256 byte-level symbols: vocab 259


def _byte_level_tokenizer():
    """A byte-level BPE with no merges: every byte is a token, every text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for s in symbols:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return tok


def make_tiny_llama(path: Path, *, seed: int = 0, std: float = 0.08, tie_word_embeddings: bool = False,
                    **overrides) -> Path:
    """Write a random tiny LlamaForCausalLM checkpoint to `path` (created) and return it."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _byte_level_tokenizer()
    cfg = dict(TINY_CONFIG, **overrides)
    vocab = tok.get_vocab_size()
    h, inter, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = h // n_heads

    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": np.ones(h, np.float32)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
            p + "self_attn.q_proj.weight": w(n_heads * head_dim, h),
            p + "self_attn.k_proj.weight": w(n_kv * head_dim, h),
            p + "self_attn.v_proj.weight": w(n_kv * head_dim, h),
            p + "self_attn.o_proj.weight": w(h, n_heads * head_dim),
            p + "mlp.gate_proj.weight": w(inter, h),
            p + "mlp.up_proj.weight": w(inter, h),
            p + "mlp.down_proj.weight": w(h, inter),
        })
    if not tie_word_embeddings:
        tensors["lm_head.weight"] = w(vocab, h)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **cfg,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "rope_scaling": None,
        "tie_word_embeddings": tie_word_embeddings,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))

    tok.save(str(path / "tokenizer.json"))
    special = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg["max_position_embeddings"],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }, indent=2))
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A session-wide tiny random Llama directory (read it, never write into it)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")
