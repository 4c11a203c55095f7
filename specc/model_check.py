"""Is a local model directory usable? Say what is missing and what is there instead.

Shared by the planner, the engine and both backends, so every layer gives the same message.
"""
from __future__ import annotations

import json
from pathlib import Path

from specc.errors import UserError

WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json")


def listing(path: Path, limit: int = 30) -> str:
    """The entries of a directory, for an error message."""
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(path).iterdir())
    except OSError as exc:
        return f"(cannot list {path}: {exc.strerror})"
    if not entries:
        return "(empty)"
    more = f", … ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def check_model_dir(path: Path, *, weights: tuple[str, ...] = WEIGHTS, need_tokenizer: bool = True) -> dict:
    """Return the model's config.json, or raise UserError naming what is missing and what exists."""
    path = Path(path).expanduser()
    where = "model.path"
    if not path.exists():
        parent = path.parent
        found = f"{parent} holds: {listing(parent)}" if parent.is_dir() else f"its parent {parent} does not exist either"
        raise UserError(f"model directory {path} does not exist", where=where,
                        hint=f"{found}. Point model.path at a local HF-format directory (config.json, "
                             "*.safetensors, tokenizer.json), or use builtin:tiny-llama")
    if not path.is_dir():
        raise UserError(f"model path {path} is a file, not a directory", where=where,
                        hint="point model.path at the directory holding config.json and the weights")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(any(path.glob(p)) for p in weights):
        missing.append(f"weights ({' or '.join(weights)})")
    if need_tokenizer and not any((path / t).is_file() for t in TOKENIZER):
        missing.append("a tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    if missing:
        hint = f"found: {listing(path)}"
        if any(path.glob("*.bin")) and not any(any(path.glob(p)) for p in weights):
            hint += "; PyTorch .bin weights found: re-save them with save_pretrained(..., safe_serialization=True)"
        raise UserError(f"model directory {path} is missing {', '.join(missing)}", hint=hint, where=where)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path / 'config.json'} is not valid JSON: {exc}", where=where,
                        hint="restore the file from the model's source") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{path / 'config.json'} has no model_type; is this a Hugging Face model directory?", where=where,
                        hint="expected a directory written by save_pretrained()")
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
