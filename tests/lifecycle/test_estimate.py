"""Estimates with their sources: the seeds' worked example, calibrations, priors, windows, compile."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from specc.estimate.calibrations import load_calibration
from specc.estimate.facts import (
    eval_sample_limit,
    facts_from_config,
    n_checkpoints,
    n_evaluations,
)
from specc.estimate.fit import fit_window, recommend_batch
from specc.estimate.markdown import NOT_ESTIMATED, estimates_markdown
from specc.estimate.priors import load_priors
from specc.estimate.result import RunFacts
from specc.estimate.shape import device_key, shape_of_config
from specc.estimate.sources import estimate_run
from specc.plan.runs import plan_experiment
from specc.spec.model import Training, parse_time
from specc.spec.validate import load_spec
from tests.lifecycle.run_files import REPO, cal_entry, write_calibration, write_run

LOCAL = {"resources": {"cluster": "local", "partition": "main", "time": None, "window_hours": 2, "margin_hours": 0.25}}
# 50 evaluation batches of 4 (the spec's batch): eval_examples where the spec has it, else the older eval_batches.
EVAL_50 = {"eval_examples": 200} if "eval_examples" in Training.model_fields else {"eval_batches": 50}


def plan(path):
    return plan_experiment(load_spec(path))


def test_seeds_worked_example(in_tmp):
    """8,000 samples × 500 tokens × 3 epochs at 800 tok/s = 4.17 h, which fits in 12 h − 0.5 h."""
    run = plan(REPO / "specs" / "window-12h.yaml").runs[0]
    e = run.config["estimate"]
    assert e["source"] == "declared" and "unmeasured" in e["source_text"]
    assert e["tokens"] == 8000 * 500 * 3 and e["tokens_per_s"] == 800
    assert round(e["train_s"] / 3600, 2) == 4.17
    est = estimate_run(run.config)
    fit = fit_window(run.config, est, 12, 0.5)
    assert fit.fits is True and fit.budget_s == 11.5 * 3600 and "4.17 h of 11.50 h" in fit.text
    # Declared figures never shorten the time limit: the window stays.
    assert run.resources.time == "12:00:00"


def test_window_that_does_not_fit_says_what_would(in_tmp):
    run = plan(REPO / "specs" / "window-12h.yaml").runs[0]
    est = estimate_run(run.config)
    fit = fit_window(run.config, est, 4, 0.5)
    assert fit.fits is False and "does NOT fit" in fit.text
    text = " ".join(fit.suggestions)
    assert "epochs instead of 3" in text and "window of" in text and "profile fast" in text


def test_counting():
    assert n_evaluations(300, 50) == 7            # steps 0, 50, …, 300
    assert n_evaluations(310, 50) == 8            # … and the last step
    assert n_checkpoints(300, 100) == 3 and n_checkpoints(310, 100) == 4


def test_calibration_is_preferred_and_predicts_the_whole_wall_time(write_spec, in_tmp, monkeypatch):
    path = write_spec({**LOCAL, "training": EVAL_50}, drop=["resources.time"])
    first = plan(path).runs[0]
    key = device_key(first.config["resources"])
    assert key == "local-cpu"
    write_calibration(in_tmp / "calibrations", key, {shape_of_config(first.config).key: cal_entry(first.config)})
    run = plan(path).runs[0]
    e = run.config["estimate"]
    assert e["source"] == "calibration" and "calibrations/local-cpu.json" in e["source_text"]
    # 100 steps × 0.5 s + warm-up 1.5 + bookkeeping 100 × 0.01 + evaluations at steps 0 and 100 (eval_every 250:
    # prepare 0.5 + 2 × 50 batches × 0.1) + one best/ export 0.05 + one checkpoint 0.4 + final export 0.05 + summary 0.2
    wall = 50 + 1.5 + 1 + 0.5 + 10.0 + 0.05 + 0.4 + 0.05 + 0.2
    assert e["wall_s"] == pytest.approx(wall, rel=1e-3)
    assert e["total_s"] == pytest.approx(wall + 6.0, rel=1e-3)      # + imports 3, model 2, data 1
    assert e["tokens"] == 100 * 1000 and e["tokens_per_s"] == 2000
    # A measured estimate sets the sbatch time: estimate + 10% + margin, rounded up to 5 minutes.
    assert run.resources.time == "00:20:00"
    assert parse_time(run.resources.time) >= e["total_s"] * 1.1 + 0.25 * 3600
    assert "calibration" in run.resources.time_source
    assert run.config["resources"]["time"] == "00:20:00"
    assert 60 <= run.resources.signal_lead_s <= 120 and run.resources.signal_lead_source.startswith("calibration")
    md = estimates_markdown(plan(path))
    assert "| `main` | calibration |" in md and "calibrations/local-cpu.json" in md


def test_no_estimate_keeps_the_plan_as_it_was(write_spec, in_tmp):
    p = plan(write_spec())
    assert "estimate" not in p.runs[0].config
    assert estimates_markdown(p) == NOT_ESTIMATED


def test_past_time_accuracy_corrects_the_next_estimate(write_spec, in_tmp):
    path = write_spec(LOCAL, drop=["resources.time"])
    cfg = plan(path).runs[0].config
    key = shape_of_config(cfg).key
    write_calibration(in_tmp / "calibrations", "local-cpu", {key: cal_entry(cfg)},
                      {key: [{"run": "x/main", "source": "calibration", "time_accuracy": 0.5},
                             {"run": "y/main", "source": "calibration", "time_accuracy": 0.5}]})
    e = plan(path).runs[0].config["estimate"]
    assert e["correction"] == 0.5 and e["wall_s"] == pytest.approx(2 * e["raw_wall_s"], rel=1e-3)


def test_calibration_of_the_same_data_gives_steps_of_an_epoch_run(write_spec, in_tmp):
    spec = {**LOCAL, "training": {"max_steps": None, "epochs": 2}}
    path = write_spec(spec, drop=["resources.time"])
    cfg = plan(path).runs[0].config
    assert cfg["training"]["total_steps"] is None
    entry = cal_entry(cfg)
    entry["data"] = {"train": cfg["data"]["train"], "valid": cfg["data"]["valid"], "format": cfg["data"]["format"],
                     "stride": None, "batches_per_epoch": 40, "tokens_per_step": 900.0, "tokens_per_epoch": 36000,
                     "valid_batches": 5, **eval_sample_limit(cfg["training"])}
    facts = facts_from_config(cfg, entry)
    assert facts.steps == 80 and facts.tokens == 80 * 900 and facts.eval_batches == 5


def test_priors_same_shape_and_scaled(in_tmp):
    runs = in_tmp / "runs"
    base = write_run(runs, "old", "main", summary={"tokens_per_s": 1000.0, "train_s": 100.0, "wall_s": 120.0,
                                                    "peak_mem_mb": 4096, "device": {"params_total": 1e9}})
    cfg = json.loads((base / "config.json").read_text())
    priors = load_priors(runs)
    assert len(priors) == 1
    facts = RunFacts(100, "declared", 1e6, "test", 1e4, True, 10)
    e = estimate_run(dict(cfg, run="new"), facts=facts, priors=priors)
    assert e.source == "prior" and "old/main" in e.source_text and e.tokens_per_s == 1000
    assert e.train_s == pytest.approx(1000) and e.wall_s == pytest.approx(1200)
    # A 3B model on the same device: throughput scaled down by the parameter ratio.
    other = json.loads(json.dumps(cfg))
    other["model"]["path"], other["model"]["size"] = "/models/big", "3B"
    e3 = estimate_run(other, facts=facts, priors=priors, new_params=3e9)
    assert e3.source == "prior" and e3.tokens_per_s == pytest.approx(1000 / 3) and "scaled" in e3.source_text
    # Another device key: no prior applies; profile custom has no declared figure.
    elsewhere = json.loads(json.dumps(cfg))
    elsewhere["resources"] = {"cluster": "della", "gpus": 1, "gpu_type": "h100"}
    assert estimate_run(elsewhere, facts=facts, priors=priors).source == "none"


def test_batch_from_measured_memory():
    """The seeds: batch 1 uses 2.4 GB on an 80 GB GPU → 80 / 2.4 × 0.7 ≈ 23."""
    from specc.estimate.result import Estimate

    est = Estimate("r", "calibration", "c", peak_mem_gb=2.4, mem_source="calibration")
    batch, accum, why = recommend_batch(est, 80, 1, 1)
    assert (batch, accum) == (23, 1) and "70%" in why
    # With the weights measured apart, only activations scale with the batch.
    est = Estimate("r", "calibration", "c", peak_mem_gb=20, mem_source="calibration")
    batch, accum, _ = recommend_batch(est, 80, 4, 8, fixed_gb=12)
    assert batch == int((56 - 12) / 2) and accum == max(1, round(32 / batch))
    assert recommend_batch(Estimate("r", "declared", "d", peak_mem_gb=60), 80, 4, 8) is None


def test_compile_is_deterministic_and_imports_no_ml_library(write_spec, in_tmp):
    path = write_spec(LOCAL, drop=["resources.time"])
    cfg = plan(path).runs[0].config
    write_calibration(in_tmp / "calibrations", "local-cpu", {shape_of_config(cfg).key: cal_entry(cfg)})
    code = ("import sys; from specc.cli import app, register_commands; register_commands()\n"
            "try:\n    app(['compile', sys.argv[1], '--out', sys.argv[2]], standalone_mode=False)\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'mlx', 'matplotlib') if m in sys.modules))")
    outs = []
    for i in range(2):
        proc = subprocess.run([sys.executable, "-c", code, str(path), f"gen{i}"], capture_output=True, text=True,
                              cwd=in_tmp)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "[]"
        outs.append({p.relative_to(in_tmp / f"gen{i}").as_posix(): p.read_text()
                     for p in (in_tmp / f"gen{i}").rglob("*") if p.is_file()})
    assert outs[0] == outs[1]
    sbatch = outs[0]["t/main/train.sbatch"]
    assert "--time=00:20:00" in sbatch
    assert "calibration" in outs[0]["t/plan.md"] and json.loads(outs[0]["t/main/config.json"])["estimate"]["source"] == "calibration"


def test_calibration_files_round_trip(in_tmp):
    from specc.estimate.calibrations import open_calibration

    cal = open_calibration("k")
    cal.entries["s"] = {"throughput": {"tokens_per_s": 1234.56789012}}
    cal.add_accuracy("s", {"run": "e/r", "source": "calibration", "time_accuracy": 0.9})
    cal.add_accuracy("s", {"run": "e/r", "source": "calibration", "time_accuracy": 0.95})   # same run: replaced
    cal.save()
    again = load_calibration("k")
    assert again.entries["s"]["throughput"]["tokens_per_s"] == 1234.57
    assert again.correction("s", "calibration") == (0.95, 1)
    assert cal.path == Path("calibrations/k.json") and math.isclose(again.correction("s", "declared")[1], 0)
