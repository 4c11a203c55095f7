"""Is a local model directory usable? Say what is missing and what is there instead."""
from __future__ import annotations

import json
from pathlib import Path

from specc.errors import UserError

WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer.model")


def _listing(path: Path, limit: int = 12) -> str:
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError:
        return "(cannot list it)"
    if not entries:
        return "(empty)"
    more = f", … {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def check_model_dir(path: Path) -> dict:
    """Return the model's config.json, or raise UserError naming what is missing and what exists."""
    path = Path(path)
    if not path.exists():
        parent = path.parent
        where = f"{parent} holds: {_listing(parent)}" if parent.is_dir() else f"{parent} does not exist either"
        raise UserError(f"model directory {path} does not exist", hint=f"{where}. Point model.path at a local "
                        "HF-format directory (config.json, *.safetensors, tokenizer.json), or use builtin:tiny-llama")
    if not path.is_dir():
        raise UserError(f"model path {path} is a file, not a directory", hint="model.path must be an HF-format directory")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(any(path.glob(p)) for p in WEIGHTS):
        missing.append("weights (*.safetensors)")
    if not any((path / t).is_file() for t in TOKENIZER):
        missing.append("a tokenizer (tokenizer.json or tokenizer.model)")
    if missing:
        raise UserError(f"model directory {path} is missing {', '.join(missing)}",
                        hint=f"found: {_listing(path)}. Save the model with save_pretrained() or download it in full")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path / 'config.json'} is not valid JSON: {exc}", hint="restore the file from the model's source") from None
    return config


def param_count(config: dict) -> int | None:
    """Parameters of a Llama-family decoder from its config (embeddings included), or None."""
    try:
        h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        inter = config["intermediate_size"]
        heads = config["num_attention_heads"]
        kv = config.get("num_key_value_heads", heads)
        head_dim = config.get("head_dim") or h // heads
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * inter
    norms = 2 * h
    embed = vocab * h * (1 if config.get("tie_word_embeddings", False) else 2)
    return layers * (attn + mlp + norms) + embed + h
