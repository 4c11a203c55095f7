"""The one tiny random Llama the tests build: plain Hugging Face format, written with numpy alone (no downloads).

`make_tiny_llama(path)` writes what a real checkpoint holds: config.json, model.safetensors and a
fast tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json), so transformers,
peft, bitsandbytes and mlx-lm all load it as a LlamaForCausalLM. It needs only numpy, safetensors and
tokenizers, so the MLX tests use it on a machine without torch.

Two tokenizers:
- "bytes" (default): byte-level BPE without merges, vocab 259 (<pad> <s> </s> + 256 bytes): any
  text round-trips; the config uses the classic `rope_theta` form.
- "words": a word-level vocabulary w0, w1, ... (plus <pad> <s> </s> <unk>) of `vocab_size`; the
  config uses transformers 5's `rope_parameters` form, which the MLX backend translates for mlx-lm.
The weights depend only on (seed, std, shapes): both give the same draws for the same shapes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BYTE_SPECIALS = ("<pad>", "<s>", "</s>")
WORD_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def make_tiny_llama(path: Path, *, tokenizer: str = "bytes", vocab_size: int = 128, hidden_size: int = 64,
                    intermediate_size: int = 128, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                    rope_theta: float = 10000.0, max_position_embeddings: int | None = None,
                    tie_word_embeddings: bool = False, std: float = 0.08, seed: int = 0) -> Path:
    """Write a random tiny LlamaForCausalLM checkpoint to `path` (created) and return it."""
    from safetensors.numpy import save_file

    if tokenizer not in ("bytes", "words"):
        raise ValueError(f"tokenizer must be 'bytes' or 'words', not {tokenizer!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer == "bytes":
        vocab = _write_byte_tokenizer(path)
    else:
        vocab = vocab_size
        _write_word_tokenizer(path, vocab_size)
    h, inter, head_dim = hidden_size, intermediate_size, hidden_size // num_heads
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": np.ones(h, np.float32)}
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
        tensors["lm_head.weight"] = w(vocab, h)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    rope = ({"rope_theta": rope_theta, "rope_scaling": None} if tokenizer == "bytes"
            else {"rope_parameters": {"rope_theta": rope_theta, "rope_type": "default"}})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": max_position_embeddings or (256 if tokenizer == "bytes" else 512),
        "rms_norm_eps": 1e-5,
        **rope,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": tie_word_embeddings,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def _write_byte_tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
    for s in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(BYTE_SPECIALS))
    tok.save(str(path / "tokenizer.json"))
    _write_tokenizer_config(path, {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}, 256,
                            {"add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False})
    return tok.get_vocab_size()


def _write_word_tokenizer(path: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(vocab_size - len(WORD_SPECIALS))]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate([*WORD_SPECIALS, *words])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    _write_tokenizer_config(path, {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                            512, {})


def _write_tokenizer_config(path: Path, special: dict, max_length: int, extra: dict) -> None:
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length, **extra, **special}, indent=2))
