"""The engine contract, the same for every installed backend (see conftest.py for how runs are started).

1. a run completes with the documented run-directory layout, summary and metrics
2. exact resume after SIGKILL at many points (steps, micro-batches, checkpoint and best/ writes, random times)
3. a corrupt newest checkpoint is skipped with a warning; the run still ends bit-identical
4. a NaN loss or NaN gradients stop the run as "diverged" (exit 65) without applying the update
5. the gradient-spike and plateau policies stop exactly where configured
6. resume-and-extend (--extend-steps) and a fresh schedule from old weights (--init-from)
7. exported adapters load in their ecosystem and reproduce the backend's loss
8. SIGTERM / SIGUSR1 checkpoint at the next step boundary, exit 75, and the resume is exact
9. a control run evaluates the base model without training
10. bad input fails with exit 1 and a message that says where, without a traceback
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conformance_harness import (
    adapter_arrays,
    assert_arrays_equal,
    assert_same_training,
    checkpoints,
    deterministic,
    load_arrays,
    read_metrics,
    specc_state,
    step_lines,
    val_lines,
)
from backends.layout import canonical_adapter
from specc.engine import checkpoint as ckpt
from specc.errors import UserError
from specc.plan.schedule import ScheduleSpec, extend
from specc.plan.schedule import lr as lr_at

pytestmark = pytest.mark.integration

KILLED = -signal.SIGKILL


def newest_valid(run_dir) -> int:
    """The step an `--resume auto` would start from (read-only: nothing is repaired)."""
    for step, path in sorted(checkpoints(run_dir).items(), reverse=True):
        try:
            ckpt.verify_checkpoint(path)
            return step
        except ckpt.CorruptCheckpoint:
            continue
    return 0


def checkpoint_adapter(path) -> dict[str, np.ndarray]:
    return {k: v for k, v in load_arrays(path / "state.safetensors").items() if k.startswith("adapter/")}


def canonical(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adapter arrays under any backend's or ecosystem's names (a checkpoint holds the canonical layout of
    backends/layout.py, a backend's state() its own) in canonical names and orientation, when they are LoRA."""
    named = {k.split(":", 1)[-1].removeprefix("adapter/").replace(".default.", "."): v for k, v in arrays.items()}
    try:
        return {k: np.ascontiguousarray(v) for k, v in canonical_adapter(named).items()}
    except UserError:
        return named


def assert_same_adapter(exported: dict[str, np.ndarray], state: dict[str, np.ndarray], what: str) -> None:
    """An exported adapter holds exactly the checkpoint's adapter arrays (names compared when they line up)."""
    a, b = canonical(exported), canonical(state)
    if sorted(a) == sorted(b):
        assert_arrays_equal(a, b, what)
        return

    def key(v):  # backends name their tensors their own way: compare the multisets of arrays
        return (v.shape, v.dtype.str, v.tobytes())

    assert sorted(map(key, a.values())) == sorted(map(key, b.values())), f"{what}: the arrays differ"


# ------------------------------------------------------------------------------------ 1. a full run

def test_run_completes_with_documented_layout(reference):
    run, t = reference.run_dir, reference.spec["training"]
    n, ce, keep = t["max_steps"], t["checkpoint_every"], t["keep_last"]
    s = reference.summary
    assert s["status"] == "completed", s["stop_reason"]
    assert s["steps"] == n and s["total_steps"] == n
    assert s["tokens"] > 0 and s["tokens_per_s"] > 0 and s["peak_mem_mb"] > 0 and s["wall_s"] > 0
    assert math.isfinite(s["best_val_loss"]) and math.isfinite(s["final_loss"]) and s["stop_reason"]

    metrics = read_metrics(run)
    steps = step_lines(metrics)
    assert [m["step"] for m in steps] == list(range(1, n + 1))
    schedule = ScheduleSpec(**s["schedule"])
    for m in steps:
        assert set(m) >= {"step", "loss", "lr", "grad_norm", "tokens", "step_s", "mem_mb"}, m
        assert m["lr"] == lr_at(schedule, m["step"] - 1), m
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and m["tokens"] > 0, m
    assert sum(m["tokens"] for m in steps) == s["tokens"]

    vals = val_lines(metrics)
    assert [v["step"] for v in vals] == [0, *range(t["eval_every"], n + 1, t["eval_every"])]
    assert all(math.isfinite(v["val_loss"]) for v in vals)
    best = min(vals, key=lambda v: v["val_loss"])
    assert s["best_val_loss"] == best["val_loss"] and s["best_step"] == best["step"]
    assert best["step"] > 0, "the tiny model did not improve on the base model: the test setup is too weak"
    assert list((run / "events").glob("events.out.tfevents.*")), "no TensorBoard event file"

    kept = checkpoints(run)
    expected = {n - i * ce for i in range(keep)} | ({best["step"]} if best["step"] % ce == 0 else set())
    assert set(kept) == expected, f"checkpoints kept: {sorted(kept)}, expected keep_last={keep} + best"
    for step, path in kept.items():
        ckpt.verify_checkpoint(path)
        assert {p.name for p in path.iterdir()} >= {"state.safetensors", "trainer_state.json", "adapter", "manifest.json"}
        assert json.loads((path / "trainer_state.json").read_text())["step"] == step
    for published, step in (("adapter", n), ("best", best["step"])):
        note = json.loads((run / published / "specc_adapter.json").read_text())
        assert note["step"] == step
        assert_same_adapter(adapter_arrays(run / published), checkpoint_adapter(kept[step]), f"{published}/")
        assert_same_adapter(specc_state(run / published), checkpoint_adapter(kept[step]), f"{published}/ (specc's copy)")
    assert json.loads((run / "config.json").read_text())["kind"] == "train"


# --------------------------------------------------------------------------- 2. exact resume after kill -9

def _fault_points(ref_metrics: list[dict], spec: dict) -> list[tuple[str, int]]:
    """Every fault point of the standard run, in the order the engine passes them."""
    t = spec["training"]
    n, ce = t["max_steps"], t["checkpoint_every"]
    improved, best = set(), math.inf
    for v in val_lines(ref_metrics):
        if v["val_loss"] < best:
            best = v["val_loss"]
            improved.add(v["step"])
    points = []
    for step in range(1, n + 1):
        if t["grad_accum"] > 1:
            points.append(("micro", step))
        points.append(("step", step))
        if step in improved and step > 0:
            points.append(("best", step))
        if step % ce == 0 or step == n:
            points.append(("save", step))
    points.append(("final", n))
    return points


def test_exact_resume_after_sigkill(workspace, reference):
    """>= 20 SIGKILLs (between micro-batches, at step boundaries, mid-checkpoint, mid-best/, mid-final export and
    at random times), each followed by `--resume auto`; the result is bit-identical to the uninterrupted run.

    The points are drawn at random (SPECC_CONFORMANCE_SEED replays a draw, SPECC_CONFORMANCE_KILLS sets how
    many); each attempt resumes from the newest valid checkpoint, so it passes again every point after it."""
    ws, spec = workspace, workspace.spec()
    seed = int(os.environ.get("SPECC_CONFORMANCE_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    t = reference.spec["training"]
    n = t["max_steps"]
    ref_metrics = read_metrics(reference.run_dir)
    points = _fault_points(ref_metrics, reference.spec)
    # A step's time in the reference (training plus its share of checkpointing): random kills land within ~2 steps.
    step_time = (sum(m["step_s"] for m in step_lines(ref_metrics))
                 + sum(m.get("seconds", 0.0) for m in ref_metrics if m.get("event") == "checkpoint")) / n
    pos = {p: i for i, p in enumerate(points)}
    n_kills = int(os.environ.get("SPECC_CONFORMANCE_KILLS", "22"))
    first_save = pos[("save", t["checkpoint_every"])]
    must = {("micro", 1), ("final", n)}                                   # one before any checkpoint exists
    must |= set(rng.sample([p for p in points if p[0] == "save"], min(5, n_kills // 4)))   # mid-checkpoint
    must |= set(rng.sample([p for p in points if p[0] == "best"], 1))      # mid best/ publish
    rest = [p for p in points if p not in must and pos[p] > first_save]
    n_random = min(4, n_kills // 5)
    plan = sorted(must | set(rng.sample(rest, max(0, n_kills - n_random - len(must)))), key=pos.get)
    # random-time kills after these deterministic ones, in the first half, where much of the run is left
    random_after = {round((k + 1) * len(plan) / (2 * n_random + 1)) for k in range(n_random)}

    kills, run = [], ws.run_dir()           # (fault, the checkpoint step that attempt resumed from)
    for i, (point, step) in enumerate(plan):
        resume_from = newest_valid(run) if run.exists() else 0
        floor = pos[("save", resume_from)] if resume_from else -1
        if pos[(point, step)] <= floor:      # a random kill went past it: take a point of its kind soon after
            later = [p for p in points if pos[p] > floor][:8]
            point, step = rng.choice([p for p in later if p[0] == point] or later[:3])
        r = ws.specc(spec, fault=f"kill@{point}:{step}")
        assert r.rc == KILLED, (f"seed {seed}: kill@{point}:{step} (resuming from {resume_from}) did not kill "
                                f"the run: rc {r.rc}\n{r.stderr[-3000:]}")
        kills.append((f"{point}:{step}", resume_from))
        resume_from = newest_valid(run)
        if i in random_after and n - resume_from > 4:
            p = ws.start(spec)
            if p.wait_for(rf"step \d+/{n}") is not None and p.poll() is None:
                time.sleep(rng.uniform(0.0, 2 * step_time))
                p.kill()
            rc = p.wait()
            assert rc == KILLED, f"seed {seed}: a random-time kill came too late (rc {rc}):\n{p.stderr[-3000:]}"
            kills.append(("random", resume_from))
    print(f"seed {seed}: {len(kills)} kills (fault, resumed from): {kills}")
    r = ws.specc(spec)
    assert r.rc == 0, f"seed {seed}: the final resume failed (rc {r.rc}):\n{r.stderr[-3000:]}"
    assert_same_training(run, reference.run_dir)
    assert len(kills) >= n_kills - 2, f"seed {seed}: only {len(kills)} kills: {kills}"
    assert sum(frm > 0 for _, frm in kills) >= len(kills) - 3, f"seed {seed}: most kills must resume: {kills}"
    assert sum(k.startswith("save:") for k, _ in kills) >= min(3, n_kills // 4), f"seed {seed}: {kills}"
    assert json.loads((run / "summary.json").read_text())["restarts"] >= 1


# ------------------------------------------------------------------------- 3. corrupt newest checkpoint

def _flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_checkpoint_falls_back_to_the_previous_one(workspace, reference):
    ws, spec = workspace, workspace.spec()
    run = ws.run_dir()
    assert ws.specc(spec, fault="kill@step:9").rc == KILLED
    for corrupt, last in ((_flip_byte, False), (_truncate, True)):
        kept = checkpoints(run)
        assert sorted(kept)[-2:] == [6, 8], sorted(kept)
        corrupt(kept[8] / "state.safetensors")
        r = ws.specc(spec) if last else ws.specc(spec, fault="kill@step:9")
        assert re.search(r"warning: skipping checkpoint step_0000008: .*state\.safetensors", r.stderr), r.stderr[-3000:]
        assert re.search(r"resumed from \S*step_0000006 at step 6", r.stderr), r.stderr[-3000:]
        assert r.rc == (0 if last else KILLED), r.stderr[-3000:]
    assert_same_training(run, reference.run_dir)


# ------------------------------------------------------------------------------------------ 4. NaN stop

def test_nan_loss_exits_65_through_the_cli(workspace, reference):
    ws = workspace
    r = ws.specc(ws.spec(), inject={"nan_loss_at": 5})
    assert r.rc == 65, r.stderr[-3000:]
    run = ws.run_dir()
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "diverged" and s["steps"] == 4
    assert "step 5" in s["stop_reason"] and "not applied" in s["stop_reason"], s["stop_reason"]
    assert newest_valid(run) == 4, "the last good checkpoint is kept"
    assert deterministic(step_lines(read_metrics(run))) == deterministic(step_lines(read_metrics(reference.run_dir)))[:4]
    assert read_metrics(run)[-1]["event"] == "diverged"


@pytest.mark.parametrize("fault", ["nan_loss_at", "nan_grad_at"])
def test_nan_stops_before_the_update(workspace, fault):
    """In-process with a wrapped backend: the weights after the stop are exactly those after step k-1."""
    ws, k = workspace, 5
    got = ws.call("nan_run", spec=str(ws.spec()), backend=ws.backend, fault=fault, step=k)
    assert got["status"] == "diverged" and got["exit_code"] == 65 and got["steps"] == k - 1, got
    if fault == "nan_grad_at":  # the backend itself must refuse a non-finite update
        assert got["applied"] == [True] * (k - 1) + [False], got
        assert "gradient norm" in got["stop_reason"], got["stop_reason"]
    else:
        assert got["applied"] == [True] * (k - 1), "optimizer_step must not run after a NaN loss"
        assert "loss is nan" in got["stop_reason"], got["stop_reason"]
    before = load_arrays(ws.root / "before_fault.safetensors")
    assert_arrays_equal(load_arrays(ws.root / "after_stop.safetensors"), before,
                        "adapter weights after the stop vs after step k-1")
    run = ws.run_dir()
    assert newest_valid(run) == k - 1
    assert_arrays_equal(canonical(checkpoint_adapter(checkpoints(run)[k - 1])), canonical(before),
                        "the last good checkpoint")
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"


# ----------------------------------------------------------------------------------- 5. stop policies

@pytest.mark.parametrize("warmup", [0, 3])
def test_grad_spike_policy_stops_at_warmup_plus_patience(workspace, warmup):
    ws = workspace
    spec = ws.spec({"training": {"early_stopping": {"enabled": True, "grad_spike_threshold": 1e-9,
                                                    "grad_spike_patience": 2, "warmup_steps": warmup}}})
    r = ws.specc(spec)
    assert r.rc == 0, r.stderr[-3000:]
    run = ws.run_dir()
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "early_stopped" and s["steps"] == warmup + 2, s
    assert "gradient norm above" in s["stop_reason"], s["stop_reason"]
    assert newest_valid(run) == warmup + 2
    assert_same_adapter(adapter_arrays(run / "adapter"), checkpoint_adapter(checkpoints(run)[warmup + 2]), "adapter/")


def test_plateau_policy_stops_after_patience_checks(workspace):
    ws = workspace
    spec = ws.spec({"training": {"early_stopping": {"enabled": True, "patience": 1, "min_delta": 100.0,
                                                    "check_every": 2, "warmup_steps": 0}}})
    r = ws.specc(spec)
    assert r.rc == 0, r.stderr[-3000:]
    s = json.loads((ws.run_dir() / "summary.json").read_text())
    # check at step 2 sets the best; the check at step 4 fails to beat it by min_delta: patience 1 is used up
    assert s["status"] == "early_stopped" and s["steps"] == 4, s
    assert "plateau" in s["stop_reason"], s["stop_reason"]
    # Running it again (as a requeued job would) resumes into the stop, not past it.
    r = ws.specc(spec)
    assert r.rc == 0, r.stderr[-3000:]
    again = json.loads((ws.run_dir() / "summary.json").read_text())
    assert again["status"] == "early_stopped" and again["steps"] == 4, again


# ------------------------------------------------------------------------- 6. extend and init-from

def test_extend_steps_then_init_from(workspace, reference):
    ws = workspace
    # A constant schedule makes the extension visible: it must decay from the old rate to the minimum.
    spec = ws.spec({"training": {"max_steps": 10, "schedule": {"kind": "constant"}}})
    assert ws.specc(spec).rc == 0
    run = ws.run_dir()
    first = read_metrics(run)
    old = ScheduleSpec(**json.loads((run / "summary.json").read_text())["schedule"])

    r = ws.specc(spec, "--extend-steps", "20")
    assert r.rc == 0, r.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 20 and s["total_steps"] == 20
    steps = step_lines(read_metrics(run))
    assert [m["step"] for m in steps] == list(range(1, 21))
    assert deterministic(steps[:10]) == deterministic(step_lines(first)), "the first 10 steps were rewritten"
    new = ScheduleSpec(**s["schedule"])
    assert new == extend(old, 10, 20, decay="cosine")
    # (to the last bit would be nicer: schedule.lr computes min + (start - min) * 1.0, one ulp off)
    assert steps[10]["lr"] == pytest.approx(lr_at(old, 9), rel=1e-12), "the extension starts at the old last rate"
    assert steps[19]["lr"] == pytest.approx(old.min_lr, rel=1e-12, abs=0), "and ends at the minimum"
    assert all(m["lr"] == lr_at(new, m["step"] - 1) for m in steps[10:])
    assert all(a["lr"] >= b["lr"] for a, b in zip(steps[10:], steps[11:]))
    assert 20 in checkpoints(run)

    other = ws.spec({"experiment": "conf-b", "training": {"max_steps": 10}}, name="b.yaml")
    r = ws.specc(other, "--init-from", run)
    assert r.rc == 0, r.stderr[-3000:]
    assert "initialised the adapter from" in r.stderr
    run_b = ws.run_dir("conf-b")
    metrics_b = read_metrics(run_b)
    sched_b = ScheduleSpec(**json.loads((run_b / "summary.json").read_text())["schedule"])
    assert step_lines(metrics_b)[0]["lr"] == lr_at(sched_b, 0) == sched_b.peak_lr / (sched_b.warmup_steps + 1)
    source_val = val_lines(read_metrics(run))[-1]
    assert source_val["step"] == 20
    start_val = val_lines(metrics_b)[0]
    assert start_val["step"] == 0 and start_val["val_loss"] == pytest.approx(source_val["val_loss"], rel=1e-6)
    base_val = val_lines(read_metrics(reference.run_dir))[0]["val_loss"]
    assert start_val["val_loss"] != base_val, "the adapter weights were not loaded"


# ------------------------------------------------------------------------------ 7. export and reload

def test_exported_adapters_reload_in_their_ecosystem(workspace, reference, tiny_model_dir):
    run, s = reference.run_dir, reference.summary
    kept = checkpoints(run)
    pairs = {str(run / "best"): str(kept[s["best_step"]]), str(run / "adapter"): str(kept[s["steps"]])}
    for exported, checkpoint in pairs.items():
        assert_same_adapter(adapter_arrays(Path(exported)), checkpoint_adapter(Path(checkpoint)),
                            f"{exported} vs {checkpoint}")
    ids = [1] + [4 + (7 * i) % 60 for i in range(23)]
    got = workspace.call("reload_losses", backend=workspace.backend, model_dir=str(tiny_model_dir),
                         lora=reference.spec["model"]["lora"], adapters=pairs, ids=ids)
    for exported, r in got["adapters"].items():
        assert r["count"] == len(ids) - 1 and r["backend"] != got["base"], (exported, r, got["base"])
        if r["ecosystem"] is not None:
            assert r["ecosystem"] == pytest.approx(r["backend"], rel=1e-5), f"{exported} reloaded gives another loss"
    if any(r["ecosystem"] is None for r in got["adapters"].values()):
        pytest.skip(f"no ecosystem loader check for backend {workspace.backend!r} (add one to _inproc.ECOSYSTEM_LOSS)")


# ------------------------------------------------------------------------------------------- 8. signals

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_checkpoints_and_exits_75(workspace, reference, sig):
    ws, spec = workspace, workspace.spec()
    n = reference.spec["training"]["max_steps"]
    p = ws.start(spec)
    assert p.wait_for(rf"step 3/{n}") is not None
    os.kill(p.pid, sig)
    rc = p.wait()
    assert rc == 75, f"rc {rc}\n{p.stderr[-3000:]}"
    run = ws.run_dir()
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and 3 <= s["steps"] < n, s
    assert signal.Signals(sig).name in s["stop_reason"], s["stop_reason"]
    assert newest_valid(run) == s["steps"], "the checkpoint is written at the step boundary"
    r = ws.specc(spec)
    assert r.rc == 0, r.stderr[-3000:]
    assert_same_training(run, reference.run_dir)


def test_signal_during_the_last_step_still_completes(workspace, reference):
    """Nothing is left to resume: the run finishes (final adapter, exit 0) instead of asking for a requeue."""
    ws = workspace
    n = reference.spec["training"]["max_steps"]
    r = ws.specc(ws.spec(), fault=f"term@micro:{n}")     # SIGTERM to itself between the micro-batches of step n
    assert r.rc == 0, r.stderr[-3000:]
    assert_same_training(ws.run_dir(), reference.run_dir)


# ------------------------------------------------------------------------------------- 9. control run

def test_control_run_evaluates_without_training(workspace, reference):
    ws = workspace
    spec = ws.spec({"sweep": {"matrix": {"training.lr": [0.01]}, "name": "lr{training.lr}", "control": True}})
    r = ws.specc(spec, "--run", "control_tiny")
    assert r.rc == 0, r.stderr[-3000:]
    run = ws.run_dir("conf", "control_tiny")
    s = json.loads((run / "summary.json").read_text())
    assert s["kind"] == "control" and s["status"] == "completed" and s["steps"] == 0 and s["tokens"] == 0
    assert math.isfinite(s["val_loss"]) and s["best_val_loss"] == s["val_loss"]
    base_val = val_lines(read_metrics(reference.run_dir))[0]["val_loss"]
    assert s["val_loss"] == pytest.approx(base_val, rel=1e-6), "the control run is the untrained base model"
    assert not checkpoints(run) and not (run / "adapter").exists()


# ------------------------------------------------------------------------------------------ 10. bad input

def test_missing_model_dir_is_a_clear_error(workspace):
    ws = workspace
    missing = ws.root / "no-such-model"
    r = ws.specc(ws.spec({"model": {"path": str(missing)}}))
    assert r.rc == 1, r.stderr[-3000:]
    assert str(missing) in r.stderr and "spec.yaml" in r.stderr, r.stderr   # the path, and what its parent holds
    assert "Traceback" not in r.stderr + r.stdout


def test_broken_dataset_line_names_file_and_line(workspace, dataset_dir):
    ws = workspace
    lines = (dataset_dir / "train.jsonl").read_text().splitlines()
    lines[2] = '{"text": "unterminated'
    broken = ws.root / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    r = ws.specc(ws.spec({"data": {"train": str(broken)}}))
    assert r.rc == 1, r.stderr[-3000:]
    assert f"{broken}:3:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
