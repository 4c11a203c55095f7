"""`specc export`: a run's adapter in another format, or merged into its base model.

The run directory says everything: config.json (the base model, its quantization and dtype, the LoRA
settings) and best/ or adapter/ (written by whichever backend trained it, PEFT or mlx-lm format).
The adapter is read into the canonical layout (backends/layout.py) and written again:

- peft:   adapter_config.json + adapter_model.safetensors (peft.PeftModel.from_pretrained)
- mlx:    adapter_config.json + adapters.safetensors (mlx_lm.load(base, adapter_path=...))
- merged: a full Hugging Face model directory (base + adapter; a 4-bit base dequantized), written by
          a backend (`Mergeable.export_merged`; by default the one that trained the adapter).

Every export is checked before it is published, and published atomically into --out, which must
not exist yet (or be empty): an adapter format is read back and must hold exactly the weights; a
merged model is loaded again as a plain base model, and its loss on the probe batch must match the
base + adapter's within MERGED_TOLERANCE.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from backends import load_backend
from backends.layout import NOTE, AdapterDir, adapter_format, read_adapter_dir, write_mlx, write_peft
from backends.protocol import LoraSettings, Mergeable, ModelSettings, OptimizerSettings
from specc.data.sources import resolve_model_path
from specc.engine import atomic, travel
from specc.engine.config import load_run_config
from specc.errors import UserError, staged

FORMATS = ("peft", "mlx", "merged")
ADAPTERS = {"best": "best", "final": "adapter"}
MERGED_NOTE = "specc_merged.json"   # where a merged model came from, and its check
# The merged model's probe loss against base + adapter's (relative): float32 measured ~1e-7 (the sum
# (W + BA) x rounds differently from W x + B (A x)); bfloat16 stores W + BA rounded to 8 bits of mantissa.
MERGED_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 1e-2}


@staged("export")
def export_run(run_dir: Path, *, adapter: str, fmt: str, out: Path, backend: str | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Export one adapter of a run; returns what was written (and what a merge dequantized)."""
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if adapter not in ADAPTERS:
        raise UserError(f"--adapter {adapter!r}: use best or final")
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.json)",
                        hint="pass runs/<experiment>/<run>, the directory `specc run` trained")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty; nothing was overwritten",
                        hint="choose a new --out directory, or remove that one first")
    cfg = load_run_config(run_dir / "config.json", None)
    if cfg.kind == "control" or cfg.model.lora is None:
        raise UserError(f"{run_dir} is a control run: it trained no adapter")
    src = run_dir / ADAPTERS[adapter]
    if adapter_format(src) is None:
        other = "final" if adapter == "best" else "best"
        raise UserError(f"{src}: the run has no {adapter} adapter" + (" yet" if adapter == "final" else ""),
                        hint=f"try --adapter {other}" + (" (adapter/ is written when the run completes)"
                                                         if adapter == "final" else " (best/ needs a validation split)"))
    found = read_adapter_dir(src)
    model_dir = resolve_model_path(cfg.model.path, log=log)
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    base = travel.base_identity(model_dir)
    for w in travel.check_base(found.note.get("base"), base, src, cfg.model.path):
        log(f"warning: {w}")
    travel.check_dims(found.shape, config, src, cfg.model.path)
    n_blocks = int(config.get("num_hidden_layers") or len(found.shape.layers))
    travel.check_lora(travel.lora_record(cfg.model.lora), travel.found_lora(found.shape, found.alpha), n_blocks, src)
    note = {**found.note, "exported_from": str(src), "format": fmt}
    if fmt == "merged":
        facts = _merged(found, cfg, model_dir, out, backend, note, log)
    else:
        facts = _adapter(found, fmt, model_dir, out, n_blocks, note)
    log(f"exported {src} ({found.format}, rank {found.shape.rank}, step {found.note.get('step', '?')}) "
        f"as {fmt} to {out}")
    return facts


def _adapter(found: AdapterDir, fmt: str, model_dir: Path, out: Path, n_blocks: int, note: dict) -> dict:
    write = write_peft if fmt == "peft" else write_mlx

    def fill(d: Path) -> None:
        write(d, found.weights, alpha=found.alpha, dropout=found.dropout, base_model=str(model_dir), n_blocks=n_blocks)
        back = read_adapter_dir(d)   # the loud check: what a reader gets back is exactly the adapter
        same = set(back.weights) == set(found.weights) and all(
            np.array_equal(back.weights[k], found.weights[k]) for k in found.weights)
        if not same or abs(back.alpha - found.alpha) > 1e-9 * found.alpha:
            raise RuntimeError(f"the {fmt} export of {found.path} does not read back as the same adapter")
        (d / NOTE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")

    atomic.write_tree_atomic(out, fill)
    return {"format": fmt, "out": str(out), "dequantized": None}


def _merged(found: AdapterDir, cfg, model_dir: Path, out: Path, backend: str | None, note: dict, log) -> dict:
    name = backend or found.note.get("backend") or ("torch" if found.format == "peft" else "mlx")
    settings = ModelSettings(path=Path(model_dir), quantization=cfg.model.quantization, dtype=cfg.model.dtype)
    lora = cfg.model.lora
    be = load_backend(name)
    if not isinstance(be, Mergeable):
        raise UserError(f"the {name} backend cannot write a merged model", hint="pass --backend torch or --backend mlx")
    be.setup(settings, LoraSettings(rank=lora.rank, alpha=lora.alpha, dropout=0.0,
                                    target_modules=tuple(lora.target_modules), layers=lora.layers),
             OptimizerSettings(), seed=0)
    be.load_adapter_weights(travel.adapter_weights(be, found.weights))
    batch = travel.probe_batch(int(travel.base_identity(model_dir)["arch"].get("vocab_size") or 2))
    before = travel.probe(be, batch)
    facts: dict = {}

    def fill(d: Path) -> None:
        facts.update(be.export_merged(d))
        if facts.get("dequantized"):
            log(f"the {cfg.model.quantization} base was dequantized: {facts['dequantized']}; the merged model holds "
                "the weights training saw, in full precision")
        check = load_backend(name)    # the merged directory, loaded as a plain base model
        check.setup(ModelSettings(path=d, quantization="none", dtype=facts["dtype"]), None, OptimizerSettings(), seed=0)
        after = travel.probe(check, batch)
        tol = MERGED_TOLERANCE.get(facts["dtype"], 2e-2)
        diff = abs(after["loss"] - before["loss"]) / max(abs(before["loss"]), 1e-12)
        if diff > tol:
            raise UserError(f"the merged model's probe loss {after['loss']:.6f} differs from base + adapter's "
                            f"{before['loss']:.6f} by {diff:.2e} (tolerance {tol:g}); nothing was written to {out}",
                            hint="report this (merge) with the backend's versions; export --format peft or mlx meanwhile")
        facts["probe"] = {"base_plus_adapter": before["loss"], "merged": after["loss"], "relative_diff": diff}
        (d / MERGED_NOTE).write_text(json.dumps({**note, "merged": facts}, indent=2) + "\n", encoding="utf-8")
        log(f"checked the merged model: probe loss {after['loss']:.6f} vs base + adapter {before['loss']:.6f} "
            f"({diff:.1e} relative, tolerance {tol:g})")

    atomic.write_tree_atomic(out, fill)
    return {"format": "merged", "out": str(out), "backend": name, **facts}
