"""Issue 10, item 3: a prior run is evidence only when it measured what the new run will do.

A prior must match the backend, the quantization and the device (and the shape, or be scaled and say
so); interrupted, extended and failed runs are never priors; memory scaled from a prior keeps its
fixed part. Real run directories (config.json, summary.json, metrics.jsonl) under a temporary runs/.
"""
from __future__ import annotations

import json
import time

import pytest

from specc.estimate.calibrations import load_calibration
from specc.estimate.evidence import measurement_problem, was_extended
from specc.estimate.fit import recommend_batch
from specc.estimate.priors import load_priors
from specc.estimate.result import RunFacts
from specc.estimate.shape import shape_of_config
from specc.estimate.sources import estimate_run
from tests.lifecycle.run_files import (
    cal_entry,
    step_records,
    write_calibration,
    write_run,
)

FACTS = RunFacts(200, "declared", 200 * 2048.0, "test", 2048.0, True, 10)


def torch_device(device="cpu", quant="none", params=1e9):
    return {"backend": "torch", "device": device, "dtype": "float32", "quantization": quant, "params_total": params}


def mlx_device(quant="none", params=1e9):
    return {"backend": "mlx", "device": "gpu", "dtype": "bfloat16", "params_total": params,
            "quantization": {"requested": quant}}


def finished(tokens_per_s=1000.0, status="completed", backend="torch", device=None, **extra):
    s = {"status": status, "tokens_per_s": tokens_per_s, "train_s": 100.0, "wall_s": 120.0, "peak_mem_mb": 4096.0,
         "backend": backend, "device": device or torch_device(), "steps": 100, "total_steps": 100,
         "history": [{"kind": "fresh", "step": 0, "total_steps": 100, "backend": backend, "at": time.time()}],
         "extended": False}
    s.update(extra)
    return s


def target(runs, name="new", **config):
    """The config of a run to estimate (written like any other, without a summary)."""
    d = write_run(runs.parent / "targets", "t", name, config=config)
    return json.loads((d / "config.json").read_text())


def test_an_mlx_spec_never_uses_a_torch_prior(in_tmp):
    runs = in_tmp / "runs"
    write_run(runs, "torch-run", "main", config={"backend": "torch"}, summary=finished(backend="torch"))
    write_run(runs, "auto-run", "main", summary=finished(backend="torch"))      # backend auto, ran torch
    cfg = target(runs, backend="mlx")
    e = estimate_run(cfg, facts=FACTS, priors=load_priors(runs))
    assert e.source != "prior", e.source_text
    assert any("torch-run/main: backend torch, this run mlx" in n for n in e.notes)    # and plan says why
    write_run(runs, "mlx-run", "main", config={"backend": "mlx"},
              summary=finished(tokens_per_s=300.0, backend="mlx", device=mlx_device()))
    e = estimate_run(cfg, facts=FACTS, priors=load_priors(runs))
    assert e.source == "prior" and "mlx-run/main" in e.source_text and e.tokens_per_s == 300.0
    assert "mlx" in e.source_text


def test_an_nf4_torch_spec_ignores_an_interrupted_mlx_run_and_a_bf16_one(in_tmp):
    runs = in_tmp / "runs"
    nf4 = {"backend": "torch", "model": {"quantization": "nf4"}}
    write_run(runs, "mlx-int", "main", config={"backend": "mlx", "model": {"quantization": "nf4"}},
              summary=finished(tokens_per_s=5.0, status="interrupted", backend="mlx", device=mlx_device("nf4")))
    write_run(runs, "torch-bf16", "main", config={"backend": "torch"}, summary=finished(tokens_per_s=2000.0))
    cfg = target(runs, **nf4)
    e = estimate_run(cfg, facts=FACTS, priors=load_priors(runs))
    assert e.source != "prior", e.source_text
    # A finished NF4 torch run of another length is a prior: scaled, and its source says how.
    write_run(runs, "torch-nf4", "main", config={**nf4, "data": {"max_length": 256}},
              summary=finished(tokens_per_s=800.0, device=torch_device(quant="nf4")))
    e = estimate_run(cfg, facts=FACTS, priors=load_priors(runs))
    assert e.source == "prior" and "torch-nf4/main" in e.source_text
    assert "max_length 256 → 512" in e.source_text and "scaled" in e.source_text


def test_interrupted_extended_failed_runs_are_never_priors(in_tmp):
    runs = in_tmp / "runs"
    history = [{"kind": "fresh", "step": 0, "total_steps": 100, "backend": "torch", "at": 1.0},
               {"kind": "extend", "step": 100, "total_steps": 150, "backend": "torch", "at": 2.0}]
    write_run(runs, "ext", "main", summary=finished(total_steps=150, steps=150, history=history, extended=True))
    write_run(runs, "int", "main", summary=finished(status="interrupted"))
    write_run(runs, "fail", "main", summary=finished(status="failed"))
    write_run(runs, "div", "main", summary=finished(status="diverged"))
    write_run(runs, "live", "main", summary=finished(status="running"))
    old = finished(total_steps=150, steps=150)            # an old summary: no history, no "extended"
    del old["history"], old["extended"]
    write_run(runs, "old-ext", "main", summary=old)
    assert load_priors(runs) == []
    cfg = target(runs)
    assert estimate_run(cfg, facts=FACTS, priors=load_priors(runs)).source != "prior"
    write_run(runs, "early", "main", summary=finished(status="early_stopped", steps=60, tokens_per_s=700.0))
    (prior,) = load_priors(runs)
    assert prior.run == "early/main"
    assert estimate_run(cfg, facts=FACTS, priors=[prior]).tokens_per_s == 700.0


def test_measurement_problem_names_the_reason():
    cfg = {"training": {"total_steps": 100}}
    assert measurement_problem(finished(), cfg) is None
    assert "interrupted" in measurement_problem(finished(status="interrupted"), cfg)
    ext = finished(history=[{"kind": "fresh", "step": 0, "total_steps": 100},
                            {"kind": "extend", "step": 100, "total_steps": 300}], total_steps=300)
    assert was_extended(ext, cfg) and "extended" in measurement_problem(ext, cfg)
    resumed = finished(history=[{"kind": "fresh", "step": 0, "total_steps": 100},
                                {"kind": "resume", "step": 40, "total_steps": 100}])
    assert not was_extended(resumed, cfg) and measurement_problem(resumed, cfg) is None
    old = {"status": "completed", "total_steps": 300}
    assert was_extended(old, cfg) and not was_extended({"status": "completed", "total_steps": 100}, cfg)


def test_a_gpu_target_never_uses_a_run_that_fell_back_to_the_cpu(in_tmp):
    runs = in_tmp / "runs"
    gpu = {"backend": "torch", "resources": {"cluster": "della", "gpus": 1, "gpu_type": "h100"}}
    write_run(runs, "cpu-fallback", "main", config=gpu, summary=finished(device=torch_device("cpu")))
    cfg = target(runs, **gpu)
    assert estimate_run(cfg, facts=FACTS, priors=load_priors(runs)).source != "prior"
    write_run(runs, "on-gpu", "main", config=gpu, summary=finished(tokens_per_s=9000.0, device=torch_device("cuda:0")))
    e = estimate_run(cfg, facts=FACTS, priors=load_priors(runs))
    assert e.source == "prior" and e.tokens_per_s == 9000.0 and "cuda" in e.source_text


def tiny(batch=4):
    return {"backend": "torch", "model": {"path": "/models/tiny", "size": "tiny"}, "training": {"batch_size": batch}}


def test_memory_scaled_from_a_prior_keeps_its_fixed_part(in_tmp):
    """The issue: 0.23 GB estimated, 620 MB measured. Between steps the process held 600 MB: that part
    does not shrink with the batch."""
    runs = in_tmp / "runs"
    write_run(runs, "old", "main", config=tiny(batch=4), records=step_records(30, mem=600.0),
              summary=finished(peak_mem_mb=620.0, device=torch_device(params=1e6)))
    cfg = target(runs, **tiny(batch=2))
    e = estimate_run(cfg, facts=FACTS, priors=load_priors(runs))
    assert e.source == "prior"
    assert 600 / 1024 <= e.peak_mem_gb <= 620 / 1024
    assert "fixed" in e.mem_source and "old/main" in e.mem_source
    # Twice the batch: only the 20 MB above the fixed part doubles.
    e2 = estimate_run(target(runs, name="big", **tiny(batch=8)), facts=FACTS, priors=load_priors(runs))
    assert e2.peak_mem_gb * 1024 == pytest.approx(600 + 2 * 20, rel=1e-3)
    # The batch recommendation grows only the per-row part too.
    assert e2.fixed_mem_gb * 1024 == pytest.approx(600)
    batch, _, why = recommend_batch(e2, 2, 8, 1)
    assert batch == int((0.7 * 2 - 600 / 1024) / (40 / 1024 / 8)) and "fixed" in why


def test_memory_fixed_part_from_a_calibration_of_the_same_model(in_tmp):
    runs = in_tmp / "runs"
    write_run(runs, "old", "main", config=tiny(batch=4),
              summary=finished(peak_mem_mb=620.0, device=torch_device(params=1e6)))   # no metrics.jsonl
    other = target(runs, name="cal", **tiny(batch=16))
    write_calibration(in_tmp / "calibrations", "local-cpu",
                      {shape_of_config(other).key: cal_entry(other, peak_mb=700.0, fixed_mb=580.0)})
    cfg = target(runs, **tiny(batch=2))
    e = estimate_run(cfg, calibration=load_calibration("local-cpu"), facts=FACTS, priors=load_priors(runs))
    assert e.source == "prior"
    assert e.peak_mem_gb * 1024 == pytest.approx(580 + (620 - 580) / 2, rel=1e-3)
    assert "calibration" in e.mem_source
