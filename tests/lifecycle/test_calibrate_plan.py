"""`specc calibrate` with the real engine on a tiny local model, and `specc plan`'s model and data analysis."""
from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from specc.estimate.calibrations import load_calibration
from tests.spec_texts import dump_yaml as dump_yaml_spec


def cli(*args):
    from specc.cli import app, register_commands

    register_commands()
    return CliRunner().invoke(app, list(args))


def write_data(path, n, words, seed=0):
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"text": " ".join(f"w{rng.randrange(4, 120)}" for _ in range(words))}) + "\n"
                            for _ in range(n)))


def spec_for(tmp, model_dir, **over):
    write_data(tmp / "train.jsonl", 64, 12)
    write_data(tmp / "valid.jsonl", 16, 12, seed=1)
    spec = {
        "experiment": "tiny", "hypothesis": {"statement": "tiny"},
        "model": {"path": str(model_dir), "size": "tiny", "quantization": "none", "lora": {"rank": 4}},
        "data": {"train": "train.jsonl", "valid": "valid.jsonl", "format": "text", "max_length": 32},
        "training": {"max_steps": 12, "batch_size": 4, "grad_accum": 1, "lr": 1e-3, "eval_every": 6,
                     "eval_examples": 16, "checkpoint_every": 6, "schedule": {"kind": "constant"},
                     "early_stopping": {"enabled": False}},
        "resources": {"cluster": "local", "partition": "main", "window_hours": 1, "margin_hours": 0.1},
        "backend": "torch",
    }
    for k, v in over.items():
        spec[k] = {**spec[k], **v} if isinstance(v, dict) else v
    path = tmp / "tiny.yaml"
    path.write_text(dump_yaml_spec(spec))
    return path


@pytest.mark.integration
def test_calibrate_then_plan_and_compile_use_it(in_tmp, tiny_model):
    pytest.importorskip("torch")
    spec = spec_for(in_tmp, tiny_model)
    result = cli("calibrate", str(spec), "--steps", "8", "--warmup", "2", "--min-seconds", "0")
    assert result.exit_code == 0, result.output
    cal = load_calibration("local-cpu")
    (entry,) = cal.entries.values()
    thr, o, m = entry["throughput"], entry["overheads"], entry["memory"]
    assert thr["tokens_per_s"] > 0 and thr["step_s"] > 0 and thr["tokens_per_step"] > 0
    assert o["import_s"] > 0 and o["model_load_s"] > 0 and o["eval_batch_s"] > 0 and o["checkpoint_s"] > 0
    assert m["peak_mb"] > 0 and entry["measured"]["backend"] == "torch" and entry["measured"]["steps"] == 8
    assert entry["data"]["batches_per_epoch"] >= 1 and entry["data"]["valid_batches"] == 2
    assert not list(in_tmp.glob("runs/*"))            # calibration trains in a temporary directory
    result = cli("plan", str(spec))
    assert result.exit_code == 0, result.output
    assert "calibration" in result.output and "fits" in result.output
    result = cli("compile", str(spec))
    assert result.exit_code == 0, result.output
    config = json.loads((in_tmp / "generated" / "tiny" / "main" / "config.json").read_text())
    assert config["estimate"]["source"] == "calibration" and config["estimate"]["steps"] == 12
    assert "calibration" in config["resources"]["time_source"]


def test_plan_reports_wasted_compute(in_tmp, tiny_model):
    spec = spec_for(in_tmp, tiny_model, data={"stride": 1, "packing": False, "max_length": 16})
    write_data(in_tmp / "train.jsonl", 20, 60)     # 62 tokens each, windows of 16 every token
    result = cli("plan", str(spec))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Data (tokenized" in out and "windows" in out
    assert "overlap" in out and "times per epoch" in out          # the tokenizer's stride warning
    assert "compute wasted" in out


def test_plan_truncation_padding_and_missing_model(in_tmp, tiny_model):
    spec = spec_for(in_tmp, tiny_model, data={"packing": False, "max_length": 64})
    write_data(in_tmp / "train.jsonl", 30, 3)
    lines = [json.dumps({"text": " ".join(["w5"] * n)}) for n in (200,) * 8 + (3,) * 2]
    (in_tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = cli("plan", str(spec)).output
    assert "of the training tokens are cut off" in out and "80% of samples" in out
    spec = spec_for(in_tmp, tiny_model, model={"path": str(tiny_model.parent / "nope")})
    out = cli("plan", str(spec)).output
    assert "missing" in out and "available beside it: tiny" in out     # what is there instead


def test_plan_gives_peak_gpu_memory_before_the_run_and_the_batch_under_the_headroom(in_tmp, tiny_model):
    """A GPU run whose model has Llama-3.2-1B's shape: the memory model's parts, its source, the share of the
    GPU, and the largest micro-batch under resources.memory_headroom (batch × accum kept)."""
    from tests.lifecycle.test_memory_model import LLAMA_1B

    cfg = json.loads((tiny_model / "config.json").read_text())
    (tiny_model / "config.json").write_text(json.dumps({**cfg, **LLAMA_1B}))
    spec = spec_for(in_tmp, tiny_model, model={"quantization": "nf4", "lora": {"rank": 16}},
                    data={"max_length": 2048},
                    training={"batch_size": 8, "grad_accum": 4},
                    resources={"cluster": "della", "partition": "pli", "gpus": 1, "memory_headroom": 0.5})
    result = cli("plan", str(spec))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "Peak GPU memory before the run (main, micro-batch 8)" in out
    for part in ("base weights", "LoRA weights, gradients, AdamW state", "activations saved for backward",
                 "loss chunk", "allocator slack", "CUDA context", "on the GPU"):
        assert part in out, part
    assert "of the h100's 80 GB (headroom: resources.memory_headroom 50%)" in out
    assert "source (formula)" in out
    assert "the largest micro-batch under 50% of the GPU is" in out and "keeping batch × accum = 32" in out
    from specc.estimate.memory import Arch, largest_batch
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    run = plan_experiment(load_spec(spec)).runs[0]
    best, _ = largest_batch(run.config, Arch.from_config(LLAMA_1B), 80, 0.5)
    assert f"the largest micro-batch under 50% of the GPU is {best} " in out
