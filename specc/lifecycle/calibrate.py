"""`specc calibrate SPEC`: run a few real steps of each distinct run shape and record what they cost.

The real engine runs in-process (open_session + train, exactly what `specc run` does) on a copy of
the run's config cut to `steps` optimizer steps, in a temporary output directory, with evaluation and
checkpointing only at the end. The backend is wrapped to time each call; what is measured and how:
calibrate_measure.py. Results go to calibrations/<device key>.json, keyed by run shape
(specc/estimate/calibrations.py). `specc calibrate --from-runs`: fold_accuracy.py.
"""
from __future__ import annotations

import gc
import io
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from specc.console import stdout_console
from specc.errors import UserError
from specc.estimate.calibrations import open_calibration
from specc.estimate.shape import device_key, shape_of_config
from specc.lifecycle.calibrate_measure import (
    measure_generation,
    Measured,
    TimedBackend,
    calibration_entry,
    device_text,
    measure_import_s,
    preimport,
)
from specc.rundir import FINISHED, RunDir


@dataclass
class ShapeResult:
    run: str
    shape_key: str
    entry: dict


def distinct_shapes(plan) -> list:
    """The first training run of each distinct shape (controls share their model's shape)."""
    seen, runs = set(), []
    for run in plan.runs:
        if run.kind != "train":
            continue
        key = shape_of_config(run.config).key
        if key not in seen:
            seen.add(key)
            runs.append(run)
    return runs


def calibration_config(run_config: dict, out_dir: Path, steps: int) -> dict:
    """The run's config cut to `steps` steps: evaluation and a checkpoint only at the end, no early stop."""
    raw = json.loads(json.dumps(run_config))
    t = raw["training"]
    t.update(max_steps=steps, epochs=None, total_steps=steps, total_steps_source="calibration", eval_every=steps,
             checkpoint_every=steps, keep_last=1)
    t["early_stopping"] = dict(t.get("early_stopping") or {}, enabled=False)
    t["schedule"] = dict(t.get("schedule") or {}, warmup_steps=min((t.get("schedule") or {}).get("warmup_steps", 0), steps - 1))
    sched = raw.get("schedule")
    if sched:
        raw["schedule"] = dict(sched, total_steps=steps, warmup_steps=min(sched.get("warmup_steps", 0), steps - 1),
                               start_step=0, start_lr=None)
    raw.update(output_dir=str(out_dir / raw["run"]), continuation=None, stages={})
    raw.pop("evaluation", None)      # task scoring is measured on its own (measure_generation), not in the steps
    return raw


def calibrate_run(run, *, steps: int = 20, warmup: int = 3, backend_name: str | None = None,
                  import_s: dict | None = None, log=print) -> ShapeResult:
    """Measure one run shape with the real engine. Heavy imports happen here."""
    from backends import load_backend
    from specc.data.sources import resolve_model_path
    from specc.engine.config import from_dict
    from specc.engine.loop import RunOptions, train
    from specc.engine.prepare import resolve_data_paths
    from specc.engine.select import choose_backend
    from specc.engine.session import open_session

    if steps <= warmup + 2:
        raise UserError(f"--steps {steps} leaves too few measured steps after {warmup} warm-up steps",
                        hint="use at least warm-up + 3 steps, e.g. --steps 20")
    name, reason = choose_backend(backend_name or run.config.get("backend", "auto"))
    import_s = import_s if import_s is not None else {}
    if name not in import_s:
        import_s[name] = measure_import_s(name)
    preimport(name)
    quiet = stdout_console()
    quiet.file = io.StringIO()     # the session's own lines are not the calibration's output
    with tempfile.TemporaryDirectory(prefix="specc-calibrate-") as tmp:
        raw = calibration_config(run.config, Path(tmp), steps)
        cfg = from_dict(raw, f"calibration of {run.experiment}/{run.name}")
        # Build or fetch builtin assets first: a one-off download or build is not the run's cost.
        resolve_model_path(cfg.model.path, log=lambda m: log(f"  {m}"))
        resolve_data_paths(cfg)
        backend = TimedBackend(load_backend(name))
        t0 = time.perf_counter()
        session = open_session(cfg, RunOptions(backend=name, resume="never"), quiet, backend=backend)
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        valid = session.data.eval_batches("valid")
        eval_prepare_s = time.perf_counter() - t0
        eval_before = backend.seconds.get("eval_loss", 0.0)
        t_train = time.perf_counter()
        summary = train(session)
        t_end = time.perf_counter()
        generation = measure_generation(session)
        data = session.data
        describe = backend.describe()
        measured = Measured(
            RunDir(session.run_dir).records(), summary, backend, cfg.training.grad_accum, open_s, eval_prepare_s,
            eval_before, t_train, t_end, describe, backend.memory(),
            data.train_plan.batches_per_epoch(0) if data.train_plan else None,
            data.train_report.n_tokens if data.train_report else None, len(valid), device_text(backend, describe),
            generation, {split: len(rows) for split, rows in data._examples.items()})
        del session
    gc.collect()
    if summary.get("status") not in FINISHED:
        raise UserError(f"the calibration of run {run.name} ended {summary.get('status')}: {summary.get('stop_reason')}",
                        hint="fix the run first (`specc run` shows the same problem)")
    shape = shape_of_config(run.config)
    entry = calibration_entry(run, measured, backend_name=name, reason=reason, steps=steps, warmup=warmup,
                              import_s=import_s[name], shape=shape)
    return ShapeResult(run.name, shape.key, entry)


def calibrate_plan(plan, *, steps: int = 20, warmup: int = 3, backend: str | None = None, key: str | None = None,
                   directory=None, only: list[str] | None = None, min_seconds: float = 10.0, max_steps: int = 1000,
                   log=print) -> tuple[Path, list[ShapeResult]]:
    """Calibrate every distinct shape of an experiment and store the results; returns (file, results).

    At least `steps` steps, and when those are quick, enough more for `min_seconds` of measured steps
    (at most `max_steps`)."""
    runs = distinct_shapes(plan)
    if only:
        runs = [r for r in runs if r.name in only]
        if not runs:
            raise UserError(f"no training run named {', '.join(only)}", hint="runs: " + ", ".join(r.name for r in plan.runs))
    if not runs:
        raise UserError(f"experiment {plan.experiment} has no training run to calibrate")
    keys = {device_key(r.config["resources"]) for r in runs}
    if key is None and len(keys) > 1:
        raise UserError(f"the runs target several device keys ({', '.join(sorted(keys))})",
                        hint="calibrate on each target separately with --run, or name the file with --key")
    target = key or keys.pop()
    wants_gpu = any(r.resources.gpus for r in runs)
    results: list[ShapeResult] = []
    import_s: dict = {}
    for i, run in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {run.name}: {shape_of_config(run.config).label()} ({steps} steps, {warmup} warm-up)")
        res = calibrate_run(run, steps=steps, warmup=warmup, backend_name=backend, import_s=import_s, log=log)
        measured_s = (steps - warmup) * res.entry["throughput"]["step_s"]
        if min_seconds and measured_s < min_seconds and steps < max_steps:
            # Fast steps: 20 of them last a second or two, too short to average out caches warming up and
            # the machine's load. Measure again for long enough (the setup is cheap for such a model).
            more = min(max_steps, warmup + math.ceil(min_seconds / max(res.entry["throughput"]["step_s"], 1e-6)))
            log(f"  {steps - warmup} steps took {measured_s:.1f} s; measuring {more} steps for ≥ {min_seconds:g} s")
            res = calibrate_run(run, steps=more, warmup=warmup, backend_name=backend, import_s=import_s, log=log)
        dev = str(res.entry["measured"]["device"] or "")
        if wants_gpu and key is None and not (dev.startswith("cuda") or "gpu" in dev.lower() or "mps" in dev):
            raise UserError(f"the spec targets {target} (GPUs) but this machine ran the calibration on {dev or 'the CPU'}",
                            hint="run `specc calibrate` on the target hardware (e.g. inside a test-stage job), or "
                                 "store the figures under another name with --key")
        results.append(res)
    cal = open_calibration(target, directory)
    for res in results:
        cal.entries[res.shape_key] = res.entry
        # Accuracy records judged the old figures: a new calibration starts its own.
        stale = [r for r in cal.accuracy.get(res.shape_key, []) if r.get("source") == "calibration"]
        if stale:
            cal.accuracy[res.shape_key] = [r for r in cal.accuracy[res.shape_key] if r not in stale]
    cal.save()
    return cal.path, results
