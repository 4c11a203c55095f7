"""`specc calibrate`: run a few real steps of each distinct run shape and record what they cost.

The real engine runs in-process (open_session + train, exactly what `specc run` does) on a copy of
the run's config cut to `steps` optimizer steps, in a temporary output directory, with evaluation and
checkpointing only at the end. The backend is wrapped to time each call, which yields:

- throughput: step time and tokens/s over the steps after the first `warmup` (compilation, caches);
- fixed overheads: interpreter and library imports (a fresh subprocess), model load, data
  preparation, the warm-up steps' extra time, valid-split tokenization, seconds per evaluation
  batch, per checkpoint and per adapter export, and the bookkeeping between steps;
- memory: the backend's peak (torch.cuda max allocated, mlx peak, or the process RSS on a CPU), and
  the memory held right after the model loads (weights: what a larger batch does not grow);
- data facts (batches per epoch, tokens per epoch and per step, validation batches) that hold for
  this data only.

Results go to calibrations/<device key>.json, keyed by run shape (see calibrations.py).
"""
from __future__ import annotations

import gc
import io
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from specc import __version__
from specc.errors import UserError
from specc.lifecycle.calibrations import open_calibration
from specc.lifecycle.shape import device_key, shape_of_config

IMPORTS = {
    "torch": "import transformers; from transformers import AutoTokenizer; import torch, peft; import backends.torch_backend",
    "mlx": "import transformers; from transformers import AutoTokenizer; import mlx.core, mlx_lm; import backends.mlx_backend",
}


@dataclass
class ShapeResult:
    run: str
    shape_key: str
    entry: dict


class _Timed:
    """A backend proxy that times each call (the engine sees the real backend through it)."""

    def __init__(self, inner):
        self._inner = inner
        self.name = inner.name
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.marks: list[tuple[str, float]] = []   # ("fb", start) / ("opt", end), in order
        self.fixed_mb: float | None = None
        self.cpu_marks: list[float] = []            # process CPU time at each optimizer update

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

    def _time(self, what: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - t0
            self.counts[what] = self.counts.get(what, 0) + 1

    def setup(self, *args, **kwargs):
        self._time("setup", self._inner.setup, *args, **kwargs)
        try:
            self.fixed_mb = float(self._inner.memory().current_mb)
        except Exception:   # a backend without memory figures before the first step
            self.fixed_mb = None

    def forward_backward(self, batch, scale):
        self.marks.append(("fb", time.perf_counter()))
        return self._inner.forward_backward(batch, scale)

    def optimizer_step(self, lr):
        result = self._inner.optimizer_step(lr)
        self.marks.append(("opt", time.perf_counter()))
        self.cpu_marks.append(time.process_time())
        return result

    def eval_loss(self, batch):
        return self._time("eval_loss", self._inner.eval_loss, batch)

    def export_adapter(self, path):
        return self._time("export_adapter", self._inner.export_adapter, path)


def _eval_limit(training: dict) -> dict:
    """What the evaluation sample was sized by (estimate.same_eval_sample compares it)."""
    if "eval_examples" in training:
        return {"eval_examples": training.get("eval_examples")}
    return {"eval_batches_limit": training.get("eval_batches")}


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


def measure_import_s(backend: str) -> float:
    """Seconds a fresh `specc run` spends starting Python and importing its libraries."""
    code = IMPORTS.get(backend)
    cmd = [sys.executable, "-c", "import specc.cli; specc.cli.register_commands()" + (f"; {code}" if code else "")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise UserError(f"cannot import the {backend} backend's libraries: {proc.stderr.strip().splitlines()[-1:]}",
                        hint=f"install them: pip install 'specc[{backend}]'")
    return elapsed


def _preimport(backend: str) -> None:
    code = IMPORTS.get(backend)
    if code:
        exec(code, {})   # noqa: S102 - fixed strings above; warm imports so they do not count as model load


def _device_text(backend, describe: dict) -> str:
    device = str(describe.get("device", "?"))
    if device.startswith("cuda"):
        try:
            import torch

            return f"{torch.cuda.get_device_name(torch.device(device))} ({backend.name})"
        except Exception:
            return f"{device} ({backend.name})"
    if device in ("gpu", "mps") or device.startswith("Device(gpu"):
        return f"{platform.machine()} GPU ({backend.name})"
    return f"{platform.machine()} CPU × {os.cpu_count()} cores ({backend.name})"


def _threads(backend: str) -> int | None:
    """Intra-op threads: a run must use as many as its calibration did (OMP_NUM_THREADS)."""
    if backend == "torch":
        try:
            import torch

            return int(torch.get_num_threads())
        except Exception:
            return None
    return None


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
    return raw


def calibrate_run(run, *, steps: int = 20, warmup: int = 3, backend_name: str | None = None,
                  import_s: dict | None = None, log=print) -> ShapeResult:
    """Measure one run shape with the real engine. Heavy imports happen here."""
    from rich.console import Console

    from backends import load_backend
    from specc.engine.config import from_dict
    from specc.engine.loop import RunOptions, train
    from specc.data.sources import resolve_model_path
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
    _preimport(name)
    quiet = Console(file=io.StringIO(), highlight=False)
    with tempfile.TemporaryDirectory(prefix="specc-calibrate-") as tmp:
        raw = calibration_config(run.config, Path(tmp), steps)
        cfg = from_dict(raw, f"calibration of {run.experiment}/{run.name}")
        # Build or fetch builtin assets first: a one-off download or build is not the run's cost.
        resolve_model_path(cfg.model.path, log=lambda m: log(f"  {m}"))
        resolve_data_paths(cfg)
        backend = _Timed(load_backend(name))
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
        records = [json.loads(line) for line in (session.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        describe = backend.describe()
        memory = backend.memory()
        data = session.data
        batches_per_epoch = data.train_plan.batches_per_epoch(0) if data.train_plan else None
        tokens_per_epoch = data.train_report.n_tokens if data.train_report else None
        device_text = _device_text(backend, describe)
        del session
    gc.collect()
    if summary.get("status") not in ("completed", "early_stopped"):
        raise UserError(f"the calibration of run {run.name} ended {summary.get('status')}: {summary.get('stop_reason')}",
                        hint="fix the run first (`specc run` shows the same problem)")

    step_records = [r for r in records if "loss" in r and "step_s" in r]
    if len(step_records) <= warmup + 1:
        raise UserError(f"the calibration of run {run.name} recorded only {len(step_records)} steps")
    steady = step_records[warmup:]
    step_times = [r["step_s"] for r in steady]
    step_s = statistics.fmean(step_times)
    tokens_per_s = sum(r["tokens"] for r in steady) / sum(step_times)
    warmup_extra = max(0.0, sum(r["step_s"] for r in step_records[:warmup]) - warmup * step_s)
    ckpt = [r["seconds"] for r in records if r.get("event") == "checkpoint" and "seconds" in r]
    checkpoint_s = statistics.fmean(ckpt) if ckpt else 0.0
    n_exports = backend.counts.get("export_adapter", 0)
    export_s = backend.seconds.get("export_adapter", 0.0) / n_exports if n_exports else 0.0
    n_eval = backend.counts.get("eval_loss", 0)
    eval_batch_s = backend.seconds.get("eval_loss", 0.0) / n_eval if n_eval else 0.0

    # A step's full cycle is one optimizer update to the next; what step_s (metrics.jsonl) leaves out of
    # it is the loop's bookkeeping (metrics, TensorBoard, progress, policies).
    accum = cfg.training.grad_accum
    fb = [t for kind, t in backend.marks if kind == "fb"][::accum]
    opt = [t for kind, t in backend.marks if kind == "opt"]
    cycles = [opt[i + 1] - opt[i] for i in range(warmup, len(opt) - 1)]
    cpu = backend.cpu_marks
    # CPU seconds per wall second over the measured cycles: ~threads on an idle machine, less when shared.
    cpu_share = (cpu[-1] - cpu[warmup]) / (opt[-1] - opt[warmup]) if len(opt) > warmup + 1 and opt[-1] > opt[warmup] else None
    step_overhead = max(0.0, statistics.fmean(cycles) - statistics.fmean(r["step_s"] for r in step_records[warmup + 1:])) \
        if cycles else 0.0
    # Around the steps: start of train() to the first step (minus the step-0 evaluation), and the last
    # update to the end (minus the final evaluation, checkpoint and the exports outside it).
    eval_total = backend.seconds.get("eval_loss", 0.0) - eval_before
    start_s = (fb[0] - t_train) if fb else 0.0
    end_s = (t_end - opt[-1]) if opt else 0.0
    outside_ckpt_exports = max(0, n_exports - len(ckpt))   # each checkpoint exports the adapter once
    finish_s = max(0.0, start_s + end_s - eval_total - sum(ckpt) - outside_ckpt_exports * export_s)

    shape = shape_of_config(run.config)
    entry = {
        "shape": shape.to_dict(),
        "measured": {
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "host": socket.gethostname(),
            "backend": name, "backend_reason": reason, "device": describe.get("device"), "device_text": device_text,
            "params_total": describe.get("params_total"), "specc_version": __version__, "steps": steps,
            "warmup_steps": warmup, "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "from_run": f"{run.experiment}/{run.name}", "threads": _threads(name),
            "cpu_share": round(cpu_share, 3) if cpu_share is not None else None,
        },
        "throughput": {"tokens_per_s": tokens_per_s, "step_s": step_s,
                       "step_s_stdev": statistics.pstdev(step_times) if len(step_times) > 1 else 0.0,
                       "tokens_per_step": statistics.fmean(r["tokens"] for r in step_records)},
        "overheads": {"import_s": import_s[name], "model_load_s": backend.seconds.get("setup", 0.0),
                      "data_s": max(0.0, open_s - backend.seconds.get("setup", 0.0)), "data_tokens": tokens_per_epoch,
                      "warmup_extra_s": warmup_extra, "eval_prepare_s": eval_prepare_s, "eval_batch_s": eval_batch_s,
                      "checkpoint_s": checkpoint_s, "export_s": export_s, "step_overhead_s": step_overhead,
                      "finish_s": finish_s},
        "memory": {"peak_mb": summary.get("peak_mem_mb") or memory.peak_mb, "fixed_mb": backend.fixed_mb,
                   "source": memory.source},
        "data": {"train": run.config["data"].get("train"), "valid": run.config["data"].get("valid"),
                 "format": run.config["data"].get("format"), "stride": run.config["data"].get("stride"),
                 "batches_per_epoch": batches_per_epoch, "tokens_per_epoch": tokens_per_epoch,
                 "tokens_per_step": statistics.fmean(r["tokens"] for r in step_records),
                 "valid_batches": len(valid), **_eval_limit(run.config["training"])},
    }
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


# --- folding measured time accuracies into the calibration files ------------------------------------

CORRECTED_SOURCES = ("calibration", "declared")   # a prior's estimate is not a calibration's to correct


@dataclass
class AccuracyChange:
    run: str
    action: str                  # added | updated | unchanged | skipped
    reason: str = ""             # skipped: why
    path: Path | None = None     # the calibration file
    shape_key: str = ""
    old: float | None = None     # the time_accuracy recorded before
    new: float | None = None

    def detail(self) -> str:
        if self.action == "skipped":
            return self.reason
        was = f" (was {self.old:.3f})" if self.action == "updated" and self.old is not None else ""
        return f"time_accuracy {self.new:.3f}{was} in {self.path.as_posix()} for shape {self.shape_key}"


def _same_record(a: dict, b: dict) -> bool:
    from specc.lifecycle.calibrations import _rounded

    keys = ("run", "source", "estimated_s", "actual_s", "time_accuracy")
    return _rounded({k: a.get(k) for k in keys}) == _rounded({k: b.get(k) for k in keys})


def _superseded(acc, cal) -> str | None:
    """A calibration estimate judged figures that a newer `specc calibrate` has replaced."""
    if acc.source != "calibration" or not acc.calibrated_at:
        return None
    entry = cal.entry(acc.shape_key) or {}
    now = (entry.get("measured") or {}).get("at")
    if now and now != acc.calibrated_at:
        return (f"its estimate used the calibration measured {acc.calibrated_at}, since replaced by the one "
                f"measured {now}")
    return None


def _fold_run(run, calibrations_dir, files: dict) -> AccuracyChange:
    from specc.lifecycle.calibrations import open_calibration
    from specc.lifecycle.report import accuracy_problem, calibration_record, time_accuracy

    name = f"{run.experiment}/{run.name}"
    problem = accuracy_problem(run)
    if problem:
        return AccuracyChange(name, "skipped", problem)
    acc = time_accuracy(run, calibrations_dir)
    if acc is None:
        return AccuracyChange(name, "skipped", "no estimate was recorded with it, and none can be made now")
    if acc.source not in CORRECTED_SOURCES:
        return AccuracyChange(name, "skipped", f"its estimate came from {acc.source!r} ({acc.source_text}); only "
                                               "calibration and declared estimates are corrected")
    if not acc.shape_key or not acc.device_key:
        return AccuracyChange(name, "skipped", "its recorded estimate names no run shape or device key")
    cal = files.setdefault(acc.device_key, open_calibration(acc.device_key, calibrations_dir))
    stale = _superseded(acc, cal)
    if stale:
        return AccuracyChange(name, "skipped", stale)
    record = calibration_record(run, acc)
    before = next((r for r in cal.accuracy.get(acc.shape_key, []) if r.get("run") == record["run"]), None)
    change = AccuracyChange(name, "added", path=cal.path, shape_key=acc.shape_key, new=record["time_accuracy"],
                            old=before.get("time_accuracy") if before else None)
    if before is not None and _same_record(before, record):
        change.action = "unchanged"
        return change
    if before is not None:
        change.action = "updated"
    cal.add_accuracy(acc.shape_key, record)
    return change


def calibrate_from_runs(experiments: list[str], *, runs_root: Path = Path("runs"), directory=None,
                        include_test: bool = False) -> list[AccuracyChange]:
    """Fold the time accuracies of the experiments' runs into calibrations/<device key>.json.

    Only runs that finished as planned count (completed or early-stopped, not extended: see
    estimate.measurement_problem), with an estimate from a calibration or a declared figure. A run's
    record replaces its earlier one; files are written only when a record was added or changed."""
    from specc.lifecycle.report import experiment_dir, load_experiment

    if not experiments:
        raise UserError("--from-runs needs at least one experiment", hint="specc calibrate --from-runs EXPERIMENT ...")
    files: dict = {}
    changes: list[AccuracyChange] = []
    for exp in experiments:
        runs = load_experiment(experiment_dir(exp, runs_root), include_test)
        if not runs:
            raise UserError(f"experiment {exp!r} has no run under {runs_root}/", hint="run it first: `specc run SPEC`")
        changes += [_fold_run(run, directory, files) for run in runs if run.kind == "train"]
    changed = {c.path for c in changes if c.action in ("added", "updated")}
    for cal in files.values():
        if cal.path in changed:
            cal.save()
    return changes
