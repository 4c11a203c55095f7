"""Real run directories, calibration files and specs for the lifecycle tests, written as the engine writes them."""
from __future__ import annotations

import json
from pathlib import Path

from specc.estimate.shape import shape_of_config

REPO = Path(__file__).resolve().parents[2]


def cal_entry(config: dict, *, step_s=0.5, tokens_per_step=1000.0, peak_mb=4096.0, fixed_mb=1024.0, **overheads) -> dict:
    """A calibration entry for the shape of `config`, with round numbers."""
    o = {"import_s": 3.0, "model_load_s": 2.0, "data_s": 1.0, "data_tokens": None, "warmup_extra_s": 1.5,
         "eval_prepare_s": 0.5, "eval_batch_s": 0.1, "checkpoint_s": 0.4, "export_s": 0.05, "step_overhead_s": 0.01,
         "finish_s": 0.2}
    o.update(overheads)
    return {"shape": shape_of_config(config).to_dict(),
            "measured": {"at": "2025-01-01T00:00:00Z", "host": "h", "backend": "torch", "device": "cpu",
                         "device_text": "x86_64 CPU × 2 cores (torch)", "steps": 20, "warmup_steps": 3},
            "throughput": {"tokens_per_s": tokens_per_step / step_s, "step_s": step_s, "step_s_stdev": 0.01,
                           "tokens_per_step": tokens_per_step},
            "overheads": o, "memory": {"peak_mb": peak_mb, "fixed_mb": fixed_mb, "source": "rss"},
            "data": {"train": "elsewhere.jsonl"}}


def write_calibration(directory: Path, key: str, entries: dict, accuracy: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    path.write_text(json.dumps({"format_version": 1, "device_key": key, "entries": entries,
                                "accuracy": accuracy or {}}), encoding="utf-8")
    return path


def write_run(root: Path, experiment: str, run: str, *, config: dict | None = None, summary: dict | None = None,
              records: list[dict] | None = None) -> Path:
    d = root / experiment / run
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"format_version": 1, "experiment": experiment, "run": run, "kind": "train", "backend": "auto",
           "model": {"path": "/models/m", "size": "1B", "quantization": "none", "dtype": "auto",
                     "gradient_checkpointing": False, "lora": {"rank": 8, "target_modules": ["q_proj", "v_proj"]}},
           "data": {"train": "t.jsonl", "valid": "v.jsonl", "format": "text", "max_length": 512, "packing": True},
           "training": {"batch_size": 4, "grad_accum": 1, "total_steps": 100, "eval_every": 50,
                        "checkpoint_every": 50, "eval_examples": 40, "max_steps": 100},
           "resources": {"cluster": "local", "gpus": 0, "gpu_type": None, "time": "01:00:00"},
           "hypothesis": {"statement": "s", "expected": []}, "profile": "custom"}
    if config:
        for k, v in config.items():
            cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    (d / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    if records is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if summary is not None:
        s = {"status": "completed", "experiment": experiment, "run": run, "kind": "train", "steps": 100,
             "total_steps": 100, "best_step": 100, **summary}
        (d / "summary.json").write_text(json.dumps(s), encoding="utf-8")
    return d


def step_records(n: int, *, loss=lambda i: 2.0 / (1 + i / 20), step_s=0.1, tokens=1000, mem=500.0, val_every=25):
    out = []
    for i in range(1, n + 1):
        out.append({"step": i, "loss": loss(i), "lr": 1e-3 * min(1, i / 10), "grad_norm": 1.0, "tokens": tokens,
                    "step_s": step_s(i) if callable(step_s) else step_s, "mem_mb": mem(i) if callable(mem) else mem})
        if i % val_every == 0:
            out.append({"step": i, "val_loss": loss(i) * 1.1, "val_tokens": 100})
    return [{"step": 0, "val_loss": 2.5, "val_tokens": 100}] + out
