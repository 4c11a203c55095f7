"""Priors: finished runs in runs/ that measured what a new run will do (`specc plan` only: `specc
compile` reads committed inputs alone).

A prior stands for a run when it finished as planned (evidence.measurement_problem), ran on the same
device key, backend, quantization, dtype and gradient checkpointing, on a consistent device; of the
same shape, or the nearest one, scaled by FLOPs per token and marked so. Its memory keeps its fixed
part (weights, adapter and optimizer state, the runtime) and scales only the rest (prior_memory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from specc.estimate.calibrations import CalibrationFile
from specc.estimate.evidence import measurement_problem
from specc.estimate.result import Estimate, RunFacts
from specc.estimate.shape import (
    RunShape,
    device_key,
    params_from_label,
    shape_of_config,
)
from specc.rundir import RUNS_ROOT, iter_jsonl, read_json, summarised_runs

QUANT_BYTES = {"nf4": 0.55, "none": 2.0}   # bytes per base weight (nf4 ≈ 4.4 bits with its scales)
SHAPE_FIELDS = (("model", "model"), ("max_length", "max_length"), ("batch_size", "batch"), ("grad_accum", "accum"),
                ("lora_rank", "LoRA rank"), ("lora_targets", "LoRA targets"), ("lora_layers", "LoRA layers"),
                ("packing", "packing"), ("kernels", "kernel choices"))


@dataclass(frozen=True)
class Prior:
    run: str                    # "<experiment>/<run>"
    shape: RunShape
    device_key: str
    params: float | None
    arch: dict | None           # hidden_size, num_hidden_layers when the model dir was readable
    tokens_per_s: float
    train_s: float
    wall_s: float
    peak_mem_mb: float | None
    status: str
    backend: str | None = None          # the backend that ran (summary.json), not the spec's "auto"
    device: str | None = None           # the device it ran on: "cpu", "cuda:0", "gpu" (summary.json device)
    between_steps_mb: float | None = None   # the least memory held between steps (metrics.jsonl mem_mb)

    @property
    def device_class(self) -> str | None:
        return device_class(self.device)

    def label(self) -> str:
        return f"{self.backend or 'backend ?'} on {self.device or 'an unrecorded device'}, {self.status}"


def device_class(device) -> str | None:
    """cpu | cuda | gpu (Metal/MPS) | None when unrecorded."""
    d = str(device or "").lower()
    if not d:
        return None
    if d.startswith("cuda"):
        return "cuda"
    if "cpu" in d:
        return "cpu"
    if "gpu" in d or "mps" in d or "metal" in d:
        return "gpu"
    return d


def load_priors(runs_root: Path = RUNS_ROOT) -> list[Prior]:
    """Every run in runs/ that finished as planned (see measurement_problem), newest last."""
    found = []
    for rd in summarised_runs(runs_root):
        summary, config = rd.summary(), rd.config()
        if summary is None or config is None:
            continue
        try:
            shape = shape_of_config(config)
        except (ValueError, KeyError, TypeError):
            continue
        if summary.get("kind") == "control" or not summary.get("tokens_per_s") or not summary.get("train_s"):
            continue
        if measurement_problem(summary, config) is not None:
            continue
        device = summary.get("device") if isinstance(summary.get("device"), dict) else {}
        params = device.get("params_total") or params_from_label(config["model"].get("size"))
        found.append(Prior(f"{rd.experiment_dir.name}/{rd.name}", shape,
                           device_key(config.get("resources") or {}), float(params) if params else None,
                           _arch(config["model"]["path"]), float(summary["tokens_per_s"]), float(summary["train_s"]),
                           float(summary.get("wall_s") or summary["train_s"]), summary.get("peak_mem_mb"),
                           summary.get("status", "?"), summary.get("backend") or device.get("backend"),
                           device.get("device"), _between_steps_mb(rd.metrics_path)))
    return found


def _between_steps_mb(metrics: Path, first: int = 50) -> float | None:
    """The least memory the run held after a step (weights, adapter, optimizer state; on a CPU the
    process' RSS), over its first `first` steps: the part of the peak that a batch does not grow."""
    seen, least = 0, None
    for r in iter_jsonl(metrics):
        mem = r.get("mem_mb") if "loss" in r else None
        if isinstance(mem, (int, float)) and mem > 0:
            least = mem if least is None else min(least, mem)
            seen += 1
            if seen >= first:
                break
    return float(least) if least is not None else None


def _arch(model_path: str) -> dict | None:
    if model_path.startswith("builtin:"):
        return None
    cfg = read_json(Path(model_path) / "config.json")
    try:
        return {"hidden_size": cfg["hidden_size"], "num_hidden_layers": cfg["num_hidden_layers"]}
    except (KeyError, TypeError):
        return None


def flops_per_token(params: float, seq_len: int, arch: dict | None) -> float:
    """6P for the weights (forward + backward) plus attention, 12 · layers · hidden · L (Kaplan et al.)."""
    attn = 12 * arch["num_hidden_layers"] * arch["hidden_size"] * seq_len if arch else 0
    return 6 * params + attn


def expected_backend(config: dict) -> str | None:
    """The backend a run will use: the spec's, or for `auto` on GPUs torch (CUDA); None when only the
    machine that runs it can tell (auto on a CPU key: torch on Linux, mlx on Apple silicon)."""
    b = str(config.get("backend") or "auto")
    if b != "auto":
        return b
    return "torch" if (config.get("resources") or {}).get("gpus") else None


def prior_mismatch(prior: Prior, config: dict, shape: RunShape, dkey: str) -> str | None:
    """Why a prior cannot stand for this run (another device, backend, quantization, dtype, gradient
    checkpointing), or None. Other shape differences are scaled and named in the estimate's source."""
    if prior.device_key != dkey:
        return f"device key {prior.device_key}, this run {dkey}"
    want = expected_backend(config)
    if want is not None and prior.backend != want:
        return f"backend {prior.backend or 'unrecorded'}, this run {want}"
    if want is None and prior.shape.backend != "auto":
        return f"backend {prior.shape.backend} in its spec; this run's `auto` may choose another"
    for what in ("quantization", "dtype", "gradient_checkpointing"):
        if getattr(prior.shape, what) != getattr(shape, what):
            return f"{what} {getattr(prior.shape, what)}, this run {getattr(shape, what)}"
    cls, on_gpus = prior.device_class, bool((config.get("resources") or {}).get("gpus"))
    if cls is not None:
        if on_gpus and cls == "cpu":
            return f"it ran on the CPU ({prior.device}); this run targets GPUs"
        if not on_gpus and cls != "cpu" and (prior.backend or want) == "torch":
            return f"it ran on {prior.device}; this run targets the CPU"
    return None


def shape_differences(old: RunShape, new: RunShape) -> list[str]:
    """'max_length 256 → 512', … : what differs between a prior's shape and this run's."""
    out = []
    for attr, label in SHAPE_FIELDS:
        a, b = getattr(old, attr), getattr(new, attr)
        if attr == "lora_targets":
            a, b = ",".join(sorted(a)) or "default", ",".join(sorted(b)) or "default"
        elif attr == "kernels":
            a, b = a or "defaults", b or "defaults"
        if a != b:
            out.append(f"{label} {a} → {b}")
    return out


def _pick_prior(usable: list[Prior], shape: RunShape, new_params) -> Prior | None:
    exact = [p for p in usable if p.shape == shape]
    if exact:
        return exact[-1]
    same_model = [p for p in usable if p.shape.model == shape.model]
    if same_model:
        return min(same_model, key=lambda p: (abs(math.log(p.shape.max_length / shape.max_length)),
                                              abs(math.log(p.shape.batch_size / shape.batch_size))))
    if new_params:
        scaled = [p for p in usable if p.params]
        if scaled:
            return min(scaled, key=lambda p: abs(math.log(p.params / new_params)))
    return None


def estimate_from_priors(config, shape: RunShape, dkey: str, facts: RunFacts, priors: list[Prior], new_params,
                         new_arch, base: dict, calibration: CalibrationFile | None = None) -> Estimate | None:
    """The estimate from the best prior for this run, or None when none qualifies."""
    usable = [p for p in priors if prior_mismatch(p, config, shape, dkey) is None]
    prior = _pick_prior(usable, shape, new_params)
    if prior is None:
        return None
    same_model = prior.shape.model == shape.model
    params = new_params or (prior.params if same_model else None)
    arch = new_arch or (prior.arch if same_model else None)
    scale = _flop_ratio(prior, params, arch, shape.max_length)
    diffs = shape_differences(prior.shape, shape)
    if not same_model and prior.params and params:
        diffs.append(f"{prior.params / 1e9:.3g}B → {params / 1e9:.3g}B parameters")
    how = "same shape" if not diffs else "shape differs: " + ", ".join(diffs) + (
        f"; throughput scaled ×{scale:.3g} by FLOPs per token" if scale != 1 else
        "; throughput not scaled (no change in FLOPs per token is known)")
    src = f"prior run {prior.run} ({prior.label()}; {prior.tokens_per_s:,.0f} tok/s; {how})"
    if facts.tokens is None:
        return Estimate(**base, source="none", source_text=src + "; the token count is unknown")
    tokens_per_s = prior.tokens_per_s * scale
    train_s = facts.tokens / tokens_per_s
    overhead_ratio = max(1.0, prior.wall_s / prior.train_s)
    peak_mb, fixed_mb, mem_source = prior_memory(prior, shape, params, calibration)
    return Estimate(**base, source="prior", source_text=src, tokens_per_s=tokens_per_s, train_s=train_s,
                    overhead_s=train_s * (overhead_ratio - 1), peak_mem_gb=peak_mb / 1024 if peak_mb else None,
                    mem_source=mem_source, fixed_mem_gb=fixed_mb / 1024 if peak_mb and fixed_mb else None,
                    parts={"steps": train_s, "evaluations, checkpoints (prior's wall/train ratio)": train_s * (overhead_ratio - 1)},
                    notes=("startup (model load, tokenization) is not in a prior's wall_s",))


def unused_priors(config: dict, shape: RunShape, dkey: str, priors: list[Prior], most: int = 3) -> tuple[str, ...]:
    """Why the finished runs of this device key could not serve as priors (the first few)."""
    why = [(p.run, prior_mismatch(p, config, shape, dkey)) for p in reversed(priors) if p.device_key == dkey]
    why = [(run, w) for run, w in why if w]
    if not why:
        return ()
    text = "; ".join(f"{run}: {w}" for run, w in why[:most]) + (f"; and {len(why) - most} more" if len(why) > most else "")
    return (f"prior runs not used: {text}",)


def _flop_ratio(prior: Prior, new_params, new_arch, new_len: int) -> float:
    if not prior.params or not new_params:
        return 1.0
    return flops_per_token(prior.params, prior.shape.max_length, prior.arch) / flops_per_token(new_params, new_len, new_arch)


def _calibrated_fixed_mb(calibration: CalibrationFile | None, prior: Prior) -> tuple[float | None, str]:
    """Memory held right after the model loaded, measured by `specc calibrate` for the prior's model."""
    if calibration is None:
        return None, ""
    for entry in calibration.entries.values():
        s, mem = entry.get("shape") or {}, entry.get("memory") or {}
        same = all(s.get(f) == getattr(prior.shape, f) for f in ("backend", "model", "quantization", "dtype"))
        ran = (entry.get("measured") or {}).get("backend")
        if same and mem.get("fixed_mb") and (prior.backend is None or ran in (None, prior.backend)):
            return float(mem["fixed_mb"]), f"after model load, calibration {calibration.path.as_posix()}"
    return None, ""


def _weights_mb(params: float | None, quantization: str) -> float:
    return (params or 0.0) * QUANT_BYTES.get(quantization, 2.0) / 2**20


def prior_memory(prior: Prior, shape: RunShape, new_params, calibration: CalibrationFile | None = None
                 ) -> tuple[float | None, float | None, str]:
    """(peak MB, its fixed part in MB, the source) for `shape` from a prior's measured peak.

    The fixed part (weights, adapter and optimizer state, the runtime: measured by a calibration of the
    prior's model after load, else the least memory between the prior's steps, else the weights alone)
    stays; only the rest, the activations, scales with batch × max_length (and, for another model, with
    its size^(2/3)). Weights follow the parameters at the quantization's bytes per weight."""
    peak = prior.peak_mem_mb
    if not peak:
        return None, None, ""
    p_old = prior.params or 0.0
    p_new = new_params or p_old
    fixed, fixed_src = _calibrated_fixed_mb(calibration, prior)
    if fixed is None and prior.between_steps_mb:
        fixed, fixed_src = prior.between_steps_mb, "the least held between its steps, metrics.jsonl"
    if fixed is None:
        fixed, fixed_src = _weights_mb(p_old, prior.shape.quantization), "its weights, from the parameter count"
    fixed = min(float(fixed), float(peak))
    if prior.shape == shape and p_new == p_old:
        return float(peak), fixed, f"prior run {prior.run} (its measured peak; fixed part {fixed:,.0f} MB, {fixed_src})"
    variable = float(peak) - fixed
    ratio = (shape.batch_size * shape.max_length) / (prior.shape.batch_size * prior.shape.max_length)
    size = (p_new / p_old) ** (2 / 3) if p_old and p_new else 1.0
    fixed_new = fixed
    if p_new != p_old:   # another model: keep the runtime, swap the weights
        fixed_new = max(0.0, fixed - _weights_mb(p_old, prior.shape.quantization)) + _weights_mb(p_new, shape.quantization)
    total = fixed_new + variable * ratio * size
    text = (f"prior run {prior.run}: fixed {fixed_new:,.0f} MB ({fixed_src}"
            + (", weights rescaled" if p_new != p_old else "") + f") + the rest of its peak, {variable:,.0f} MB, "
            f"× {ratio:.3g} (batch × max_length)" + (f" × {size:.3g} (model size^2/3)" if size != 1 else "")
            + " (scaled)")
    return total, fixed_new, text
