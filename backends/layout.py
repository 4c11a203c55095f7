"""The canonical adapter and optimizer layout of a checkpoint, and the adapter directories of the ecosystem.

numpy and safetensors only: the engine, `specc export` and both backends read and write these
without torch or mlx. A checkpoint written with ``"layout": "canonical/1"`` in its trainer_state.json
holds (state.safetensors)::

    adapter/<module>.lora_A.weight            [r, in]   PEFT's orientation; <module> is the Hugging Face
    adapter/<module>.lora_B.weight            [out, r]  module path, e.g. model.layers.3.self_attn.q_proj
    optim/<module>.lora_X.weight/exp_avg      AdamW first moment, the parameter's shape and orientation
    optim/<module>.lora_X.weight/exp_avg_sq   AdamW second moment
    optim/step                                int64 scalar: AdamW updates applied (bias correction's t)
    rng/<name>                                the writing backend's RNG; only that backend restores it

Each backend converts its own state to and from this (`Backend.to_canonical` / `from_canonical`):
torch's parameter names are ``base_model.model.<module>.lora_A.default.weight`` with optimizer state
by parameter index; mlx-lm's are ``<module>.lora_a`` ([in, r], the transpose) with moments "m"/"v".
Checkpoints without the layout field are in the writing backend's own (native) layout.

Adapter directories: PEFT (adapter_config.json + adapter_model.safetensors, keys
``base_model.model.<module>.lora_A.weight``) and mlx-lm (adapter_config.json + adapters.safetensors,
keys ``<module>.lora_a``, LoRA on the last ``num_layers`` blocks, ``scale`` = alpha / rank).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specc.errors import UserError

CANONICAL = "canonical/1"
PEFT_PREFIX = "base_model.model."
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
MLX_WEIGHTS, MLX_CONFIG = "adapters.safetensors", "adapter_config.json"
NOTE = "specc_adapter.json"         # written next to every adapter specc exports (where it came from)
# HF module basename -> its path inside an mlx-lm Llama-family block (mlx-lm's `keys`).
MLX_BLOCK_KEYS = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                  "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                  "down_proj": "mlp.down_proj"}

_CANON = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_PEFT = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
_MLX = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[ab])$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def canonical_name(key: str) -> str:
    """A LoRA weight's canonical name from a PEFT (saved or in-memory), mlx-lm or canonical key."""
    m = _MLX.match(key)
    if m:
        return f"{m['module']}.lora_{m['ab'].upper()}.weight"
    m = _PEFT.match(key)
    if m:
        return f"{m['module']}.lora_{m['ab']}.weight"
    raise UserError(f"{key!r} is not a LoRA A/B weight",
                    hint="specc adapters hold LoRA A and B matrices only (no DoRA magnitudes, LoRA embeddings, "
                         "biases or modules_to_save)")


def mlx_name(name: str) -> str:
    m = _CANON.match(name)
    return f"{m['module']}.lora_{m['ab'].lower()}"


def peft_name(name: str) -> str:
    return PEFT_PREFIX + name


def is_mlx_key(key: str) -> bool:
    return bool(_MLX.match(key))


def is_canonical(arrays: dict[str, np.ndarray]) -> bool:
    """True when the "adapter/..." entries of a state are in the canonical layout (not a backend's own)."""
    keys = [k[len("adapter/"):] for k in arrays if k.startswith("adapter/")]
    return bool(keys) and all(_CANON.match(k) and not k.startswith(PEFT_PREFIX) for k in keys)


def canonical_adapter(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LoRA weights under any naming (PEFT, mlx-lm, canonical) in the canonical names and orientation."""
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        name = canonical_name(key)
        if name in out:
            raise UserError(f"the adapter holds {name} twice (as {key} and another name)")
        out[name] = np.asarray(value).T if is_mlx_key(key) else np.asarray(value)
    return out


@dataclass(frozen=True)
class AdapterShape:
    """What the weights of an adapter say about it (the rest, alpha and dropout, is in its config)."""
    rank: int
    modules: dict[str, tuple[int, int]]     # module path -> (in, out)
    targets: tuple[str, ...]                # module basenames, sorted (q_proj, v_proj, ...)
    layers: tuple[int, ...]                 # block indices that carry LoRA, sorted

    def rectangular(self) -> bool:
        """Every target in every adapted block (what a PEFT or mlx-lm config can express)."""
        return len(self.modules) == len(self.targets) * len(self.layers)


def adapter_shape(weights: dict[str, np.ndarray], where: str = "adapter") -> AdapterShape:
    """Check that canonical `weights` are LoRA pairs of one rank, and describe them."""
    pairs: dict[str, dict[str, tuple]] = {}
    for name, value in weights.items():
        m = _CANON.match(name)
        if not m or np.ndim(value) != 2:
            raise UserError(f"{where}: {name} is not a 2-D LoRA A/B weight in the canonical layout")
        pairs.setdefault(m["module"], {})[m["ab"]] = tuple(np.shape(value))
    if not pairs:
        raise UserError(f"{where}: holds no LoRA weights")
    modules, ranks = {}, set()
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise UserError(f"{where}: {module} has lora_{'A' if 'A' in ab else 'B'} but not its partner")
        (r, n_in), (n_out, r_b) = ab["A"], ab["B"]
        if r != r_b:
            raise UserError(f"{where}: {module} has lora_A of rank {r} and lora_B of rank {r_b}")
        ranks.add(r)
        modules[module] = (n_in, n_out)
    if len(ranks) > 1:
        raise UserError(f"{where}: modules have different ranks ({', '.join(map(str, sorted(ranks)))})",
                        hint="specc adapters have one rank (no rank_pattern)")
    layers = sorted({int(m.group(1)) for m in map(_LAYER.search, modules) if m})
    return AdapterShape(ranks.pop(), modules, tuple(sorted({m.rsplit(".", 1)[-1] for m in modules})), tuple(layers))


def check_canonical(arrays: dict[str, np.ndarray], where: str = "checkpoint") -> None:
    """A loud check of a whole canonical state: LoRA pairs, and optimizer moments that match them."""
    adapter = {k[len("adapter/"):]: v for k, v in arrays.items() if k.startswith("adapter/")}
    adapter_shape(adapter, where)
    moments = [k for k in arrays if k.startswith("optim/") and k != "optim/step"]
    for key in moments:
        param, _, kind = key[len("optim/"):].rpartition("/")
        if kind not in ("exp_avg", "exp_avg_sq") or param not in adapter:
            raise UserError(f"{where}: {key} is not an AdamW moment of an adapter weight in the canonical layout")
        if np.shape(arrays[key]) != np.shape(adapter[param]):
            raise UserError(f"{where}: {key} has shape {np.shape(arrays[key])}, its weight {np.shape(adapter[param])}")
    if moments and (len(moments) != 2 * len(adapter) or "optim/step" not in arrays):
        raise UserError(f"{where}: the optimizer state covers {len(moments)} moments for {len(adapter)} weights"
                        f"{'' if 'optim/step' in arrays else ' and has no optim/step'}")


# ------------------------------------------------------------------------------------ directories

@dataclass(frozen=True)
class AdapterDir:
    """A LoRA adapter directory read into the canonical layout, with what its config says."""
    path: Path
    format: str                             # "peft" | "mlx"
    weights: dict[str, np.ndarray]          # canonical names, no "adapter/" prefix
    shape: AdapterShape
    alpha: float
    dropout: float
    base_model: str | None                  # what its config names as the base (a path or hub id)
    note: dict                              # specc_adapter.json when specc wrote it, else {}


def adapter_format(path: Path) -> str | None:
    """"peft" or "mlx" when `path` is an adapter directory of that kind, else None."""
    path = Path(path)
    if (path / PEFT_CONFIG).is_file() and (path / PEFT_WEIGHTS).is_file():
        return "peft"
    if (path / MLX_CONFIG).is_file() and (path / MLX_WEIGHTS).is_file():
        return "mlx"
    return None


def read_adapter_dir(path: Path) -> AdapterDir:
    """Read a PEFT or mlx-lm LoRA adapter directory; a UserError says what is not supported in it."""
    from safetensors.numpy import load_file

    path = Path(path)
    kind = adapter_format(path)
    if kind is None:
        bins = sorted(p.name for p in path.glob("adapter_model*.bin")) if path.is_dir() else []
        raise UserError(f"{path}: not an adapter directory", where=str(path),
                        hint=("it holds " + ", ".join(bins) + " (pickle): load it with peft and save it again with "
                              "safe_serialization=True") if bins else
                        f"expected {PEFT_CONFIG} + {PEFT_WEIGHTS} (PEFT) or {MLX_CONFIG} + {MLX_WEIGHTS} (mlx-lm)")
    config = _read_json(path / PEFT_CONFIG)
    note = _read_json(path / NOTE) if (path / NOTE).is_file() else {}
    alpha, dropout, base = (_peft_config if kind == "peft" else _mlx_config)(config, path)
    try:
        raw = load_file(str(path / (PEFT_WEIGHTS if kind == "peft" else MLX_WEIGHTS)))
    except Exception as exc:   # a truncated or foreign file: SafetensorError, OSError
        raise UserError(f"cannot read the adapter weights: {exc}", where=str(path)) from None
    weights = canonical_adapter(raw)
    shape = adapter_shape(weights, str(path))
    if kind == "mlx":
        alpha *= shape.rank   # mlx-lm stores scale = alpha / rank
    return AdapterDir(path, kind, weights, shape, float(alpha), float(dropout), base, note)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path.name}: {exc}", where=str(path)) from None
    if not isinstance(value, dict):
        raise UserError(f"{path.name} is not a JSON object", where=str(path))
    return value


def _peft_config(config: dict, path: Path) -> tuple[float, float, str | None]:
    def refuse(what: str, hint: str) -> UserError:
        return UserError(f"the PEFT adapter uses {what}, which specc does not train", where=str(path / PEFT_CONFIG),
                         hint=hint)

    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise refuse(f"peft_type {config.get('peft_type')!r}", "pass a LoRA adapter")
    for flag, what in (("use_dora", "DoRA"), ("use_rslora", "rank-stabilised LoRA (scale alpha/sqrt(r))"),
                       ("fan_in_fan_out", "fan_in_fan_out (Conv1D layers)"), ("modules_to_save", "modules_to_save")):
        if config.get(flag):
            raise refuse(what, "train it again as a plain LoRA adapter, or start without --init-from")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if config.get(pattern):
            raise refuse(f"{pattern} (per-module ranks or alphas)", "specc adapters have one rank and one alpha")
    if config.get("bias", "none") not in ("none", None):
        raise refuse(f"bias={config['bias']!r}", "specc adapters have no trainable biases (bias: none)")
    if "r" not in config or "lora_alpha" not in config:
        raise UserError(f"{PEFT_CONFIG} has no r or lora_alpha", where=str(path))
    return float(config["lora_alpha"]), float(config.get("lora_dropout") or 0.0), config.get("base_model_name_or_path")


def _mlx_config(config: dict, path: Path) -> tuple[float, float, str | None]:
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise UserError(f"the mlx-lm adapter is fine_tune_type {kind!r}, not lora", where=str(path / MLX_CONFIG),
                        hint="specc starts from LoRA adapters only")
    params = config.get("lora_parameters")
    if not isinstance(params, dict) or "scale" not in params:
        raise UserError(f"{MLX_CONFIG} has no lora_parameters.scale", where=str(path))
    return float(params["scale"]), float(params.get("dropout") or 0.0), config.get("model")


def write_peft(path: Path, weights: dict[str, np.ndarray], *, alpha: float, dropout: float,
               base_model: str, n_blocks: int) -> None:
    """A PEFT LoRA adapter directory from canonical weights (peft.PeftModel.from_pretrained loads it)."""
    from safetensors.numpy import save_file

    shape = _rectangular(weights, "PEFT")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": shape.rank, "lora_alpha": alpha,
              "lora_dropout": dropout, "target_modules": list(shape.targets), "bias": "none",
              "layers_to_transform": None if len(shape.layers) == n_blocks else list(shape.layers),
              "base_model_name_or_path": base_model, "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None,
              "rank_pattern": {}, "alpha_pattern": {}}
    path.mkdir(parents=True, exist_ok=True)
    save_file({peft_name(k): np.ascontiguousarray(v) for k, v in weights.items()}, str(path / PEFT_WEIGHTS),
              metadata={"format": "pt"})
    (path / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_mlx(path: Path, weights: dict[str, np.ndarray], *, alpha: float, dropout: float,
              base_model: str, n_blocks: int) -> None:
    """An mlx-lm adapter directory from canonical weights (mlx_lm.load(base, adapter_path=...) loads it)."""
    from safetensors.numpy import save_file

    shape = _rectangular(weights, "mlx-lm")
    if shape.layers != tuple(range(n_blocks - len(shape.layers), n_blocks)):
        raise UserError(f"the adapter covers blocks {list(shape.layers)}; an mlx-lm adapter covers the last "
                        f"num_layers blocks of the {n_blocks}", hint="export it as --format peft or merged instead")
    keys = [MLX_BLOCK_KEYS.get(t, t) for t in shape.targets]
    config = {"fine_tune_type": "lora", "num_layers": len(shape.layers), "model": base_model,
              "lora_parameters": {"rank": shape.rank, "scale": alpha / shape.rank, "dropout": dropout, "keys": keys}}
    path.mkdir(parents=True, exist_ok=True)
    save_file({mlx_name(k): np.ascontiguousarray(v.T) for k, v in weights.items()}, str(path / MLX_WEIGHTS),
              metadata={"format": "mlx"})
    (path / MLX_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _rectangular(weights: dict[str, np.ndarray], fmt: str) -> AdapterShape:
    shape = adapter_shape(weights)
    if not shape.rectangular():
        raise UserError(f"the adapter has LoRA on {len(shape.modules)} modules, not on every target "
                        f"({', '.join(shape.targets)}) of every adapted block: a {fmt} config cannot say that",
                        hint="export it as --format merged instead")
    return shape
