"""A run trained 50 steps on one backend resumes on the other to the end, and the loss goes on as it would have.

The reference is the same spec trained uninterrupted on the first backend: the hand-over converts the
adapter and AdamW state (backends/layout.py), so the resumed steps see the same weights, moments, step
count, schedule and data position, and only floating-point differences between the backends remain.

Tolerance: every loss of steps 51-100 and every validation loss within HANDOVER_RTOL (relative) of the
uninterrupted run's. Measured on the quickstart: at most 4.3e-6 (torch > mlx) and 4.0e-6 (mlx > torch).
The learning rate and the tokens of each step are identical (the schedule and data position travel).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.travel.runs import HANDOVER, STEPS, quickstart, specc
from specc.engine import checkpoint as ckpt

pytestmark = pytest.mark.integration

HANDOVER_RTOL = 1e-4


@pytest.mark.parametrize("first,then", [("torch", "mlx"), ("mlx", "torch")])
def test_resume_on_the_other_backend_continues_the_run(scenarios, first, then):
    moved, ref = scenarios[f"{first}>{then}"], scenarios[first]
    got, want = moved.steps(), ref.steps()
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in range(1, HANDOVER + 1):                                  # the first backend's own steps
        assert got[step]["loss"] == want[step]["loss"], step
    worst = max(abs(got[s]["loss"] - want[s]["loss"]) / want[s]["loss"] for s in range(HANDOVER + 1, STEPS + 1))
    assert worst < HANDOVER_RTOL, f"the loss after the hand-over drifts {worst:.2e} from the {first} run's"
    for step in range(HANDOVER + 1, STEPS + 1):                          # schedule and data position travelled
        assert got[step]["lr"] == want[step]["lr"] and got[step]["tokens"] == want[step]["tokens"], step
    vals, ref_vals = moved.vals(), ref.vals()
    assert sorted(vals) == sorted(ref_vals)
    assert all(abs(vals[s] - ref_vals[s]) / ref_vals[s] < HANDOVER_RTOL for s in vals), (vals, ref_vals)

    log = moved.logs[1]
    assert f"written by the {first} backend" in log and "RNG state cannot travel between backends" in log
    assert "checked the loaded adapter: probe loss" in log and f"measured by {first} when it was saved" in log
    s = moved.summary()
    assert s["status"] == "completed" and s["steps"] == STEPS and s["restarts"] == 1 and s["backend"] == then
    assert [(h["kind"], h["backend"], h.get("from_backend")) for h in s["history"]] == \
        [("fresh", first, None), ("resume", then, first)]
    assert "not restored" in s["history"][1]["rng"]
    assert [(c["step"], c["backend"], c["layout"]) for c in s["checkpoints"]] == \
        [(HANDOVER, first, "canonical/1"), (STEPS, then, "canonical/1")]
    resumed = json.loads((moved.run_dir / "checkpoints" / ckpt.step_dir_name(STEPS) / "trainer_state.json").read_text())
    reference = json.loads((ref.run_dir / "checkpoints" / ckpt.step_dir_name(STEPS) / "trainer_state.json").read_text())
    assert resumed["early_stopping"].keys() == reference["early_stopping"].keys()
    assert {k: v for k, v in resumed["early_stopping"].items() if k != "best"} == \
        {k: v for k, v in reference["early_stopping"].items() if k != "best"}
    assert resumed["data_position"] == reference["data_position"] and resumed["schedule"] == reference["schedule"]
    assert resumed["best_step"] == reference["best_step"]
    # the final adapter is in the format of the backend that finished the run
    assert (moved.run_dir / "adapter" / ("adapters.safetensors" if then == "mlx" else "adapter_model.safetensors")).is_file()


def test_checkpoints_hold_the_same_names_on_both_backends(scenarios):
    """One layout: the torch and the MLX checkpoint of the same step hold the same arrays, name for name."""
    def arrays(name):
        path = scenarios[name].run_dir / "checkpoints" / ckpt.step_dir_name(HANDOVER) / "state.safetensors"
        return {k: v for k, v in load_file(str(path)).items() if not k.startswith("rng/")}

    t, m = arrays("torch"), arrays("mlx")
    assert sorted(t) == sorted(m) and "optim/step" in t
    assert all(t[k].shape == m[k].shape and t[k].dtype == m[k].dtype for k in t)
    assert int(t["optim/step"]) == int(m["optim/step"]) == HANDOVER
    assert any(k.startswith("adapter/model.layers.0.self_attn.q_proj.lora_A.weight") for k in t)


def _legacy_copy(scenario, cwd: Path) -> Path:
    """The scenario's step-50 checkpoint rewritten as a specc before backend-neutral checkpoints wrote it: the
    backend's own names (its state()), no layout, base, lora or probe in trainer_state.json."""
    from backends import load_backend
    from backends.protocol import LoraSettings, ModelSettings, OptimizerSettings
    from specc.data.sources import resolve_model_path

    src = scenario.run_dir / "checkpoints" / ckpt.step_dir_name(HANDOVER)
    arrays, saved = ckpt.load_checkpoint(src)
    be = load_backend(scenario.first)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    be.setup(ModelSettings(path=resolve_model_path("builtin:tiny-llama")), LoraSettings(rank=8, alpha=16,
             target_modules=targets), OptimizerSettings(), seed=0)
    native = be.from_canonical(arrays)
    assert {k for k in native if k.startswith("adapter/")} == {k for k in be.state() if k.startswith("adapter/")}
    old = {k: v for k, v in saved.items() if k not in ("layout", "base", "lora", "probe")}
    spec = quickstart(cwd)
    run = cwd / "runs" / "quickstart" / "main"
    ckpt.write_checkpoint(run / "checkpoints", HANDOVER, native, old, keep_last=2)
    (run / "config.json").write_text((scenario.run_dir / "config.json").read_text())
    return spec


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_checkpoint_in_its_backends_own_layout_still_resumes_there(scenarios, tmp_path, backend):
    ref = scenarios[backend]
    spec = _legacy_copy(ref, tmp_path / "same")
    r = specc("run", spec, "--backend", backend, cwd=tmp_path / "same")
    assert r.returncode == 0, r.stderr[-3000:]
    got = {m["step"]: m for m in (json.loads(x) for x in (tmp_path / "same/runs/quickstart/main/metrics.jsonl")
                                  .read_text().splitlines()) if "loss" in m and "event" not in m}
    want = ref.steps()
    assert [got[s]["loss"] for s in range(HANDOVER + 1, STEPS + 1)] == \
        [want[s]["loss"] for s in range(HANDOVER + 1, STEPS + 1)], "a same-backend resume is bit-exact"

    other = "mlx" if backend == "torch" else "torch"
    spec = _legacy_copy(ref, tmp_path / "other")
    run = tmp_path / "other" / "runs" / "quickstart" / "main"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = specc("run", spec, "--backend", other, cwd=tmp_path / "other")
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"was written by the {backend} backend; this run uses {other}" in r.stderr
    assert "own layout" in r.stderr and f"--backend {backend}" in r.stderr and "Traceback" not in r.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_same_backend_resume_stays_bit_exact_with_the_canonical_layout(scenarios, tmp_path):
    """Canonical checkpoints change nothing for a resume on the writing backend (torch: the fast one)."""
    spec = quickstart(tmp_path)
    assert specc("run", spec, "--backend", "torch", cwd=tmp_path, fault=f"term@step:{HANDOVER}").returncode == 75
    r = specc("run", spec, "--backend", "torch", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "probe loss" in r.stderr and "vs" in r.stderr
    run = tmp_path / "runs" / "quickstart" / "main"
    got = {m["step"]: m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if "loss" in m and "event" not in m}
    assert got == {s: m["loss"] for s, m in scenarios["torch"].steps().items()}
    final = load_file(str(run / "checkpoints" / ckpt.step_dir_name(STEPS) / "state.safetensors"))
    ref = load_file(str(scenarios["torch"].run_dir / "checkpoints" / ckpt.step_dir_name(STEPS) / "state.safetensors"))
    assert sorted(final) == sorted(ref) and all(np.array_equal(final[k], ref[k]) for k in ref)
