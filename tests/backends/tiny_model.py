"""A tiny random Llama in HF format, built locally (no downloads), for backend tests.

`make_tiny_llama(path)` writes config.json, model.safetensors and a small word-level tokenizer
(tokenizer.json + tokenizer_config.json) that `transformers`, `mlx_lm.load` and the backends read.
"""
from __future__ import annotations

from pathlib import Path

WORDS = [f"w{i}" for i in range(200)]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer(path: Path, vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS[: vocab_size - len(SPECIALS)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(path))
    return fast


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
    seed: int = 0,
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(path), safe_serialization=True)
    make_tokenizer(path, vocab_size)
    return path
