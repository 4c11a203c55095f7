"""Checkpoints and adapters that travel between backends: the layout on save and load, and the checks.

A checkpoint holds the canonical layout (backends/layout.py) when its backend is `Portable`; its
trainer_state.json then says ``"layout": "canonical/1"`` and records what the arrays fit: the base
model (`base_identity`: architecture, a sampled weights digest, the tokenizer's digest), the LoRA
settings, and a *probe*: the loss of the writing backend on one fixed batch of token ids. Loading
converts the arrays for the backend at hand and measures the probe again, so a conversion that went
wrong fails loudly (`check_probe`) instead of training on from silently wrong weights. RNG state does
not travel: another backend starts its RNG from the run's seed (it only drives LoRA dropout).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from backends.layout import CANONICAL, AdapterShape, canonical_adapter, check_canonical
from backends.protocol import Backend, Batch, Portable
from specc.errors import UserError

ARCH_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")
PROBE_LENGTH, PROBE_SEED = 64, 20240615
# Probe tolerances (relative, plus absolute where the two models are not the same numbers):
SAME = (1e-4, 0.0)          # the same backend, device kind, dtype and quantization: the same model
FLOAT32 = (1e-3, 1e-3)      # another backend or device, both float32 and unquantized (measured: 2e-7)
LOSSY = (5e-2, 5e-2)        # bfloat16 or a 4-bit base on either side (NF4 and MLX's affine 4-bit differ)


# ------------------------------------------------------------------------------ arrays on save / load

def to_checkpoint(backend: Backend, state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str | None]:
    """(the arrays a checkpoint holds, their layout): canonical for a Portable backend, else its own."""
    if not isinstance(backend, Portable):
        return state, None
    arrays = backend.to_canonical(state)
    check_canonical(arrays, f"the {backend.name} backend's state")
    return arrays, CANONICAL


def check_round_trip(backend: Backend, state: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> None:
    """Once per session: converting back gives exactly the state (a resume on this backend stays bit-exact)."""
    back = backend.from_canonical(arrays)
    bad = sorted(k for k in state if k not in back or back[k].dtype != state[k].dtype
                 or not np.array_equal(back[k], state[k]))
    if bad or set(back) - set(state):
        raise RuntimeError(f"the {backend.name} backend's canonical layout does not round-trip: "
                           f"{(bad or sorted(set(back) - set(state)))[:3]}")


def from_checkpoint(backend: Backend, arrays: dict[str, np.ndarray], saved: dict, where: str) -> dict[str, np.ndarray]:
    """A checkpoint's arrays as `backend.load_state` takes them (old checkpoints: the backend's own layout)."""
    layout = saved.get("layout")
    if layout is None:
        return arrays
    if layout != CANONICAL:
        raise UserError(f"{where}: unknown checkpoint layout {layout!r}", hint="it was written by a newer specc: upgrade")
    if not isinstance(backend, Portable):
        raise UserError(f"{where}: a backend-neutral checkpoint, and the {backend.name} backend cannot convert one",
                        hint="resume it with --backend torch or --backend mlx")
    check_canonical(arrays, where)
    return backend.from_canonical(arrays)


def adapter_weights(backend: Backend, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical adapter weights (no prefix) as `backend.load_adapter_weights` takes them."""
    arrays = {f"adapter/{k}": v for k, v in weights.items()}
    if isinstance(backend, Portable):
        return backend.from_canonical(arrays)
    raise UserError(f"the {backend.name} backend cannot load adapters written in another layout",
                    hint="start from one of its own checkpoints, or use --backend torch or mlx")


def checkpoint_adapter(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The canonical adapter of any specc checkpoint (canonical, or an old torch / mlx one)."""
    return canonical_adapter({k[len("adapter/"):]: v for k, v in arrays.items() if k.startswith("adapter/")})


# ------------------------------------------------------------------------------ the base model

def _sha(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def base_identity(model_dir: Path) -> dict:
    """What a checkpoint's adapter fits: the architecture, a weights digest (sizes and 16 sampled 64 KiB
    windows of every weight file: cheap on a large model, different for a fine-tune) and the tokenizer's."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = {k: config.get(k) for k in ARCH_FIELDS if config.get(k) is not None}
    samples = []
    for f in sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin")):
        size = f.stat().st_size
        samples.append(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for i in range(16):
                fh.seek(size * i // 16)
                samples.append(fh.read(65536))
    return {"arch": arch, "weights": _sha(samples), "tokenizer": tokenizer_digest(model_dir)}


def tokenizer_digest(model_dir: Path) -> str | None:
    """What the token ids mean: tokenizer.json's vocabulary, merges and added tokens (so a file saved again by
    another tokenizers version, with other whitespace or key order, is the same tokenizer), else the raw files."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        try:
            tok = json.loads(path.read_text(encoding="utf-8"))
            model = tok.get("model") or {}
            meaning = {"type": model.get("type"), "vocab": model.get("vocab"), "merges": model.get("merges"),
                       "added": sorted((t.get("id"), t.get("content")) for t in tok.get("added_tokens") or [])}
            return _sha([json.dumps(meaning, sort_keys=True)])
        except (OSError, ValueError, AttributeError, TypeError):
            pass
    files = [p.read_bytes() for p in (Path(model_dir) / n for n in TOKENIZER_FILES) if p.is_file()]
    return _sha(files) if files else None


def describe_arch(arch: dict) -> str:
    keys = (("model_type", ""), ("num_hidden_layers", " layers"), ("hidden_size", " hidden"), ("vocab_size", " vocab"))
    return ", ".join(f"{arch[k]}{unit}" for k, unit in keys if k in arch) or "unknown"


def check_base(saved: dict | None, now: dict, source: Path, model_path: str) -> list[str]:
    """Refuse an adapter trained on another base model (architecture) or tokenizer, saying what differs.

    Other weights of the same architecture only warn: the same model saved again (other shards, a copy)
    is fine, and a resume's probe check (check_probe) fails loudly when the weights really differ, while
    --init-from from an adapter trained on another checkpoint of the architecture is a choice."""
    if not saved:
        return []
    problems, warnings = [], []
    if saved.get("arch") != now["arch"]:
        problems.append(f"the base model differs: {source} was trained on {describe_arch(saved.get('arch') or {})}; "
                        f"{model_path} is {describe_arch(now['arch'])}")
    elif saved.get("weights") != now["weights"]:
        warnings.append(f"the base model's files differ from the ones {source} was trained on (the same "
                        f"architecture, {describe_arch(now['arch'])}: the same model saved again, or another "
                        "checkpoint of it)")
    if saved.get("tokenizer") != now["tokenizer"]:
        problems.append(f"the tokenizer differs from the one {source} was trained with (token ids mean other "
                        "tokens, so its weights do not apply)")
    if problems:
        raise UserError("; ".join(problems), where="model.path",
                        hint=f"point model.path at the base {source} was trained on; to train on this base, start "
                             "a fresh run (--resume never, without --init-from)")
    return warnings


# ------------------------------------------------------------------------------ LoRA settings

def lora_record(lora) -> dict | None:
    """The LoRA settings a checkpoint records (spec's model.lora, or None for a control run)."""
    if lora is None:
        return None
    return {"rank": int(lora.rank), "alpha": float(lora.alpha), "dropout": float(lora.dropout),
            "target_modules": sorted(t.rsplit(".", 1)[-1] for t in lora.target_modules), "layers": lora.layers}


def blocks(layers: int | None, n_blocks: int) -> list[int]:
    """The block indices `lora.layers` (the last N; None = all) means in a model of n_blocks."""
    return list(range(n_blocks - min(layers or n_blocks, n_blocks), n_blocks))


def found_lora(shape: AdapterShape, alpha: float | None) -> dict:
    """What an adapter's weights (and its config's alpha) say, in the terms check_lora compares."""
    return {"rank": shape.rank, "alpha": alpha, "target_modules": sorted(shape.targets), "blocks": list(shape.layers)}


def check_lora(spec: dict, found: dict, n_blocks: int, source: Path) -> None:
    """The adapter's rank, alpha, target modules and blocks against the spec's; one error names each mismatch."""
    wanted = blocks(spec["layers"], n_blocks)
    problems = []
    if found["rank"] != spec["rank"]:
        problems.append(f"rank {found['rank']} (the spec says {spec['rank']})")
    alpha = found.get("alpha")
    if alpha is not None and abs(alpha - spec["alpha"]) > 1e-6 * max(1.0, abs(alpha)):
        problems.append(f"alpha {alpha:g} (the spec says {spec['alpha']:g})")
    if found["target_modules"] != spec["target_modules"]:
        problems.append(f"target modules {', '.join(found['target_modules'])} "
                        f"(the spec says {', '.join(spec['target_modules'])})")
    if found["blocks"] != wanted:
        problems.append(f"LoRA on blocks {_ranges(found['blocks'])} (the spec's lora.layers="
                        f"{spec['layers'] or 'all'} means blocks {_ranges(wanted)})")
    if problems:
        raise UserError(f"{source} does not match the spec's LoRA settings: " + "; ".join(problems), where="model.lora",
                        hint="set model.lora to the adapter's settings (rank, alpha, target_modules, layers), "
                             "or start from an adapter trained with the spec's")


def _ranges(layers) -> str:
    layers = list(layers)
    if layers and layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers)) or "none"


def check_dims(shape: AdapterShape, config: dict, source: Path, model_path: str) -> None:
    """Every adapted module's input and output size as this base model has it (a different base says so)."""
    h, inter = config.get("hidden_size"), config.get("intermediate_size")
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads") or config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (h // heads if h and heads else None)
    dims = {"q_proj": (h, heads and head_dim and heads * head_dim), "k_proj": (h, kv and head_dim and kv * head_dim),
            "v_proj": (h, kv and head_dim and kv * head_dim), "o_proj": (heads and head_dim and heads * head_dim, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    n_blocks = config.get("num_hidden_layers")
    for module, (n_in, n_out) in shape.modules.items():
        expected = dims.get(module.rsplit(".", 1)[-1])
        if expected and None not in expected and (n_in, n_out) != tuple(expected):
            raise UserError(f"{source} was trained on a different base model: its {module} maps {n_in} -> {n_out}, "
                            f"in {model_path} it maps {expected[0]} -> {expected[1]}", where="model.path",
                            hint="point model.path at the base the adapter was trained on")
    if n_blocks and shape.layers and shape.layers[-1] >= n_blocks:
        raise UserError(f"{source} has LoRA on block {shape.layers[-1]}, and {model_path} has {n_blocks} blocks",
                        where="model.path", hint="point model.path at the base the adapter was trained on")


# ------------------------------------------------------------------------------ the probe

def probe_batch(vocab_size: int) -> Batch:
    """One fixed row of token ids, every position after the first a target: the same on every backend."""
    ids = np.random.default_rng(PROBE_SEED).integers(0, vocab_size, size=(1, PROBE_LENGTH), dtype=np.int64)
    mask = np.ones((1, PROBE_LENGTH), dtype=np.float32)
    mask[:, 0] = 0.0
    return Batch(ids, mask, np.ones((1, PROBE_LENGTH), dtype=np.int64), np.arange(PROBE_LENGTH)[None, :].astype(np.int64))


def probe(backend: Backend, batch: Batch) -> dict:
    """The backend's loss on the probe batch, with what decides how close another measurement must be."""
    loss_sum, n = backend.eval_loss(batch)
    facts = backend.describe()
    kind = re.search(r"cuda|gpu|mps|cpu", str(facts.get("device", "")).lower())   # "cuda:0", "Device(gpu, 0)"
    device = {"mps": "gpu"}.get(kind.group(0), kind.group(0)) if kind else "?"
    quant = facts.get("quantization")
    quant = quant.get("requested", "none") if isinstance(quant, dict) else quant or "none"
    return {"loss": loss_sum / max(n, 1), "tokens": n, "batch": _sha([np.ascontiguousarray(batch.input_ids).tobytes()]),
            "backend": backend.name, "device": device, "dtype": str(facts.get("dtype", "?")), "quantization": quant}


def probe_tolerance(saved: dict, now: dict) -> tuple[float, float]:
    if all(saved.get(k) == now.get(k) for k in ("backend", "device", "dtype", "quantization")):
        return SAME
    if {saved.get("dtype"), now.get("dtype")} == {"float32"} and saved.get("quantization") == now.get("quantization") == "none":
        return FLOAT32
    return LOSSY


def check_probe(saved: dict | None, backend: Backend, batch: Batch, source: Path) -> str | None:
    """Measure the probe again after loading; a loud error when the loaded adapter is not the saved one."""
    if not saved or saved.get("batch") != _sha([np.ascontiguousarray(batch.input_ids).tobytes()]):
        return None   # no probe recorded (an older specc, a foreign adapter), or one over another vocabulary
    now = probe(backend, batch)
    rtol, atol = probe_tolerance(saved, now)
    diff = abs(now["loss"] - saved["loss"])
    line = (f"probe loss {now['loss']:.6f} on {now['backend']} ({now['dtype']}, {now['quantization']}) vs "
            f"{saved['loss']:.6f} measured by {saved.get('backend')} when it was saved")
    if diff > rtol * abs(saved["loss"]) + atol:
        same = saved.get("backend") == now["backend"]
        raise UserError(f"{source}: the loaded adapter does not reproduce its loss: {line} (tolerance {rtol:g} "
                        f"relative + {atol:g}): the base model or its quantization changed"
                        + ("" if same else ", or the conversion between the backends' layouts is wrong"),
                        where=str(source),
                        hint="point model.path and model.quantization at what it was trained with, or start a new "
                             "run with --resume never" + ("" if same else f"; resuming with --backend "
                                                          f"{saved.get('backend')} avoids the conversion"))
    return line
