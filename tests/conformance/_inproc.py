"""Checks that need a live backend object, run in a child of the backend's fork server (see _zygote.py).

They drive the engine in-process exactly as `specc run` does (load_run_config → open_session with an
injected backend → train), or load a backend and an exported adapter side by side, and hand their
findings back as JSON (arrays as safetensors files) so the assertions stay in test_contract.py.
The pytest process itself never imports torch or mlx.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def _save(arrays: dict[str, np.ndarray], path: str) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)


def nan_run(spec: str, backend: str, fault: str, step: int) -> dict:
    """Train the spec with FaultyBackend(fault=step); save the adapter before the fault and after the stop."""
    from rich.console import Console

    from _faulty import FaultyBackend
    from backends import load_backend
    from specc.engine.config import load_run_config
    from specc.engine.loop import EXIT_CODES, RunOptions, train
    from specc.engine.session import open_session

    wrapped = FaultyBackend(load_backend(backend), **{fault: step})
    session = open_session(load_run_config(Path(spec), None), RunOptions(), Console(file=io.StringIO()), backend=wrapped)
    summary = train(session)
    after = {k: v for k, v in wrapped.inner.state().items() if k.startswith("adapter/")}
    _save(wrapped.before_fault, "before_fault.safetensors")
    _save(after, "after_stop.safetensors")
    return {"status": summary["status"], "steps": summary["steps"], "stop_reason": summary["stop_reason"],
            "exit_code": EXIT_CODES[summary["status"]], "applied": wrapped.applied}


def _torch_ecosystem_loss(model_dir: str, adapter_dir: str, ids: list[int]) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))


def _mlx_ecosystem_loss(model_dir: str, adapter_dir: str, ids: list[int]) -> float:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    model, _ = load(model_dir, adapter_path=adapter_dir)
    logits = model(mx.array([ids]))[0, :-1].astype(mx.float32)
    return float(nn.losses.cross_entropy(logits, mx.array(ids[1:]), reduction="sum"))


# How each ecosystem loads an adapter exported by its backend; a backend without an entry is only
# checked for its weights.
ECOSYSTEM_LOSS = {"torch": _torch_ecosystem_loss, "mlx": _mlx_ecosystem_loss}


def reload_losses(backend: str, model_dir: str, lora: dict, adapters: dict[str, str], ids: list[int]) -> dict:
    """Loss of one sequence: the base model, the backend with each checkpoint's adapter weights loaded, and the
    ecosystem's own loader on the matching exported directory. adapters: {exported dir: checkpoint dir}."""
    from safetensors.numpy import load_file

    from backends import load_backend
    from backends.protocol import Batch, LoraSettings, ModelSettings, OptimizerSettings

    be = load_backend(backend)
    be.setup(ModelSettings(path=Path(model_dir), quantization="none", dtype="float32"),
             LoraSettings(rank=lora["rank"], alpha=lora["alpha"], dropout=lora["dropout"],
                          target_modules=tuple(lora["target_modules"])), OptimizerSettings(), seed=0)
    n = len(ids)
    batch = Batch(input_ids=np.array([ids], dtype=np.int64),
                  loss_mask=np.array([[0.0] + [1.0] * (n - 1)], dtype=np.float32),
                  segment_ids=np.ones((1, n), dtype=np.int64), position_ids=np.arange(n, dtype=np.int64)[None])
    out = {"base": be.eval_loss(batch)[0], "adapters": {}}
    for exported, checkpoint in adapters.items():
        be.load_adapter_weights(dict(load_file(str(Path(checkpoint) / "state.safetensors"))))
        loss, count = be.eval_loss(batch)
        eco = ECOSYSTEM_LOSS.get(backend)
        out["adapters"][exported] = {"backend": loss, "count": count,
                                     "ecosystem": eco(model_dir, exported, ids) if eco else None}
    return out
