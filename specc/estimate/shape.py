"""A run's *shape*: what decides its speed and memory on given hardware, and the keys calibrations use.

Two runs with the same shape on the same device key run at the same tokens/s and peak memory, whatever
their learning rate, seed, schedule or data (the data only changes how many steps there are). The
device key names the target hardware from the spec and the catalog alone (never from the machine
compiling), so `specc compile` stays deterministic: `<cluster>-<gpu type>` for GPU runs, `<cluster>-cpu`
otherwise.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from specc.spec.model import KERNEL_DEFAULTS


@dataclass(frozen=True)
class RunShape:
    backend: str                 # the spec's backend field ("auto", "torch", "mlx")
    model: str                   # model.path as the config names it
    quantization: str
    dtype: str
    gradient_checkpointing: bool
    lora_rank: int
    lora_targets: tuple[str, ...]
    lora_layers: int | None
    batch_size: int
    grad_accum: int
    max_length: int
    packing: bool
    kernels: str = ""            # model.attention/compile/liger/loss_chunk set away from their defaults ("" = none)

    @property
    def key(self) -> str:
        return "|".join((
            f"backend={self.backend}", f"model={self.model}", f"quant={self.quantization}", f"dtype={self.dtype}",
            f"gc={int(self.gradient_checkpointing)}",
            f"lora={self.lora_rank}:{','.join(sorted(self.lora_targets))}:{self.lora_layers or 'all'}",
            f"batch={self.batch_size}", f"accum={self.grad_accum}", f"max_length={self.max_length}",
            f"packing={int(self.packing)}",
        ) + ((f"kernels={self.kernels}",) if self.kernels else ()))   # older keys stay as they were

    def label(self) -> str:
        """Short, for tables: what usually differs between shapes."""
        return (f"{self.model} r{self.lora_rank} b{self.batch_size}×{self.grad_accum} L{self.max_length}"
                + ("" if self.packing else " unpacked") + (f" {self.quantization}" if self.quantization != "none" else "")
                + (f" {self.kernels}" if self.kernels else ""))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = sorted(self.lora_targets)
        return d

    def same_model(self, other: RunShape) -> bool:
        return (self.model, self.quantization, self.dtype) == (other.model, other.quantization, other.dtype)


def shape_of_config(config: dict) -> RunShape:
    """The shape of a resolved trainer config (config.json or RunPlan.config)."""
    m, d, t = config["model"], config["data"], config["training"]
    lora = m.get("lora") or {}
    return RunShape(
        backend=str(config.get("backend", "auto")), model=str(m["path"]), quantization=str(m.get("quantization", "none")),
        dtype=str(m.get("dtype", "auto")), gradient_checkpointing=bool(m.get("gradient_checkpointing", False)),
        lora_rank=int(lora.get("rank", 8)), lora_targets=tuple(lora.get("target_modules") or ()),
        lora_layers=lora.get("layers"), batch_size=int(t["batch_size"]), grad_accum=int(t["grad_accum"]),
        max_length=int(d["max_length"]), packing=bool(d.get("packing", True)),
        kernels=",".join(f"{k}={_text(m[k])}" for k in KERNEL_DEFAULTS if k in m and m[k] != KERNEL_DEFAULTS[k]),
    )


def _text(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def device_key(resources: dict) -> str:
    """`della-h100`, `local-cpu`: the target hardware of resolved resources (RunPlan.resources.to_dict())."""
    cluster = resources.get("cluster") or "local"
    hw = resources.get("gpu_type") if resources.get("gpus") else "cpu"
    return _slug(f"{cluster}-{hw or 'gpu'}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMBT])\s*$", re.IGNORECASE)


def params_from_label(size: str | None) -> float | None:
    """'1B' → 1e9, '350M' → 3.5e8; None for labels such as 'tiny' or 'unknown'."""
    m = _SIZE.match(size or "")
    if not m:
        return None
    return float(m.group(1)) * {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2).upper()]
