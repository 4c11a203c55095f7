"""A tiny random Llama in HF format for the MLX backend tests, written with numpy only (no torch, no downloads).

`make_tiny_llama(path)` writes config.json (RoPE in the transformers>=5 `rope_parameters` form, which the
MLX backend must translate for mlx-lm), model.safetensors and a small word-level fast tokenizer, so
`mlx_lm.load(path)` and `transformers` both read it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer(path: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    special = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **special}, indent=2))


def make_tiny_llama(
    path: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 128,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    std: float = 0.08,
    seed: int = 0,
) -> Path:
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, inter, head_dim = hidden_size, intermediate_size, hidden_size // num_heads

    def w(*shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab_size, h), "model.norm.weight": np.ones(h, np.float32)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
            p + "self_attn.q_proj.weight": w(num_heads * head_dim, h),
            p + "self_attn.k_proj.weight": w(num_kv_heads * head_dim, h),
            p + "self_attn.v_proj.weight": w(num_kv_heads * head_dim, h),
            p + "self_attn.o_proj.weight": w(h, num_heads * head_dim),
            p + "mlp.gate_proj.weight": w(inter, h),
            p + "mlp.up_proj.weight": w(inter, h),
            p + "mlp.down_proj.weight": w(h, inter),
        })
    if not tie_word_embeddings:
        tensors["lm_head.weight"] = w(vocab_size, h)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab_size,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": rope_theta, "rope_type": "default"},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie_word_embeddings,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    make_tokenizer(path, vocab_size)
    return path
