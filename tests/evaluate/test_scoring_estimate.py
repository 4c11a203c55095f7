"""The plan's time estimate includes task scoring, from the generation rate `specc calibrate` measured."""
from __future__ import annotations

import pytest

from specc.estimate.calibrations import load_calibration
from specc.estimate.shape import device_key, shape_of_config
from specc.estimate.sources import estimate_run
from tests.lifecycle.run_files import cal_entry, write_calibration

TASK = {"name": "cap", "split": "test", "limit": None, "max_new_tokens": 8, "every": 50, "every_limit": 16}


def _config(kind="train", lora=True):
    return {"run": "main" if kind == "train" else "control_1B", "kind": kind, "backend": "torch", "profile": "custom",
            "model": {"path": "/m", "size": "1B", "quantization": "none", "dtype": "auto", "gradient_checkpointing": False,
                      "lora": {"rank": 8, "target_modules": ["q_proj"]} if lora else None},
            "data": {"train": "t.jsonl", "valid": "v.jsonl", "test": "x.jsonl", "format": "prompt_completion",
                     "max_length": 64, "packing": True},
            "training": {"batch_size": 4, "grad_accum": 1, "total_steps": 200, "max_steps": 200, "eval_every": 100,
                         "checkpoint_every": 100, "eval_examples": 40},
            "resources": {"cluster": "local", "gpus": 0, "gpu_type": None, "time": "01:00:00"},
            "evaluation": {"tasks": [TASK]}}


def test_scoring_is_in_the_figure_with_its_source(tmp_path):
    cfg = _config()
    entry = {**cal_entry(cfg), "generation": {"tokens_per_s": 400.0}, "data": {"examples": {"test": 200}}}
    key = device_key(cfg["resources"])
    write_calibration(tmp_path, key, {shape_of_config(cfg).key: entry})
    est = estimate_run(cfg, calibration=load_calibration(key, tmp_path))
    assert est.parts["task scoring after training"] == pytest.approx(200 * 8 / 400)
    assert est.parts["task scoring during training"] == pytest.approx(4 * 16 * 8 / 400)   # 200 // 50 = 4 times
    assert any("400 generated tokens/s (calibration)" in n for n in est.notes)
    control = estimate_run(_config("control", lora=False), calibration=load_calibration(key, tmp_path))
    assert control.source == "calibration" and control.parts["task scoring"] == pytest.approx(200 * 8 / 400)


def test_an_old_calibration_says_scoring_is_not_in_the_figure(tmp_path):
    cfg = _config()
    key = device_key(cfg["resources"])
    write_calibration(tmp_path, key, {shape_of_config(cfg).key: cal_entry(cfg)})
    est = estimate_run(cfg, calibration=load_calibration(key, tmp_path))
    assert "task scoring after training" not in est.parts
    assert any("did not measure generation" in n for n in est.notes)
