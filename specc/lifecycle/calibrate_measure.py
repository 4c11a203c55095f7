"""What `specc calibrate` measures around the real engine, and the calibration entry it makes of it.

A backend proxy (TimedBackend) times each call the engine makes; from those marks, metrics.jsonl and
the session come:

- throughput: step time and tokens/s over the steps after the first `warmup` (compilation, caches);
- fixed overheads: interpreter and library imports (a fresh subprocess), model load, data
  preparation, the warm-up steps' extra time, valid-split tokenization, seconds per evaluation
  batch, per checkpoint and per adapter export, and the bookkeeping between steps;
- memory: the backend's peak (torch.cuda max allocated, mlx peak, or the process RSS on a CPU), and
  the memory held right after the model loads (weights: what a larger batch does not grow);
- data facts (batches per epoch, tokens per epoch and per step, validation batches) that hold for
  this data only.
"""
from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from specc import __version__
from specc.errors import UserError
from specc.estimate.facts import eval_sample_limit

IMPORTS = {
    "torch": "import transformers; from transformers import AutoTokenizer; import torch, peft; import backends.torch_backend",
    "mlx": "import transformers; from transformers import AutoTokenizer; import mlx.core, mlx_lm; import backends.mlx_backend",
}


class TimedBackend:
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


def preimport(backend: str) -> None:
    code = IMPORTS.get(backend)
    if code:
        exec(code, {})   # noqa: S102 - fixed strings above; warm imports so they do not count as model load


def device_text(backend, describe: dict) -> str:
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


def intra_op_threads(backend: str) -> int | None:
    """Intra-op threads: a run must use as many as its calibration did (OMP_NUM_THREADS)."""
    if backend == "torch":
        try:
            import torch

            return int(torch.get_num_threads())
        except Exception:
            return None
    return None


def memory_parts(config: dict, records: list[dict], m: Measured) -> dict:
    """What the calibration measured of memory: the peak and the part held after load (every backend); on
    CUDA also the micro-batch it was measured at, what torch's allocator reserved and NVML saw at most, the
    CUDA context (NVML − reserved), and the memory model's figure for this shape beside it
    (specc/estimate/memory.py: `specc plan` scales the formula to this peak)."""
    peak = m.summary.get("peak_mem_mb") or m.memory.peak_mb
    out = {"peak_mb": peak, "fixed_mb": m.backend.fixed_mb, "source": m.memory.source,
           "batch_size": int(config["training"]["batch_size"])}
    if not str(m.describe.get("device", "")).startswith("cuda"):
        return out

    def most(key):
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        return max(values) if values else None

    reserved, device = most("cuda_reserved_mb"), most("gpu_mem_mb")
    out.update(reserved_mb=reserved, device_mb=device)
    if reserved and device and device > reserved:
        out["context_mb"] = device - reserved
    formula = _formula_peak_mb(config, m.describe)
    if formula:
        out.update(formula_mb=formula, formula_error=peak / formula - 1)
    return out


def _formula_peak_mb(config: dict, describe: dict) -> float | None:
    import json
    from pathlib import Path

    from specc.estimate.memory import Arch, estimate_memory

    try:
        arch = Arch.from_config(json.loads((Path(str(describe.get("model_path"))) / "config.json").read_text()))
    except (OSError, ValueError):
        return None
    return estimate_memory(config, arch).peak_mb if arch else None


@dataclass
class Measured:
    """What one calibration run left behind: its metrics lines and summary, the proxy's marks, and timings
    taken around the session (perf_counter seconds)."""
    records: list[dict]
    summary: dict
    backend: TimedBackend
    grad_accum: int
    open_s: float               # open_session: model load + data preparation
    eval_prepare_s: float       # the valid split's batches
    eval_before: float          # eval_loss seconds spent before train()
    t_train: float              # train() started
    t_end: float                # train() returned
    describe: dict
    memory: object              # the backend's memory() figures
    batches_per_epoch: int | None
    tokens_per_epoch: int | None
    valid_batches: int
    device_text: str
    generation: dict | None = None          # measure_generation(): new tokens per second when answering
    split_examples: dict | None = None      # examples per split (how many a task scores when it has no limit)


def calibration_entry(run, m: Measured, *, backend_name: str, reason: str, steps: int, warmup: int,
                      import_s: float, shape) -> dict:
    """The calibrations/<key>.json entry for one run shape (see specc/estimate/calibrations.py)."""
    records, backend = m.records, m.backend
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
    fb = [t for kind, t in backend.marks if kind == "fb"][::m.grad_accum]
    opt = [t for kind, t in backend.marks if kind == "opt"]
    cycles = [opt[i + 1] - opt[i] for i in range(warmup, len(opt) - 1)]
    cpu = backend.cpu_marks
    # CPU seconds per wall second over the measured cycles: ~threads on an idle machine, less when shared.
    cpu_share = (cpu[-1] - cpu[warmup]) / (opt[-1] - opt[warmup]) if len(opt) > warmup + 1 and opt[-1] > opt[warmup] else None
    step_overhead = max(0.0, statistics.fmean(cycles) - statistics.fmean(r["step_s"] for r in step_records[warmup + 1:])) \
        if cycles else 0.0
    # Around the steps: start of train() to the first step (minus the step-0 evaluation), and the last
    # update to the end (minus the final evaluation, checkpoint and the exports outside it).
    eval_total = backend.seconds.get("eval_loss", 0.0) - m.eval_before
    start_s = (fb[0] - m.t_train) if fb else 0.0
    end_s = (m.t_end - opt[-1]) if opt else 0.0
    outside_ckpt_exports = max(0, n_exports - len(ckpt))   # each checkpoint exports the adapter once
    finish_s = max(0.0, start_s + end_s - eval_total - sum(ckpt) - outside_ckpt_exports * export_s)
    data = run.config["data"]
    return {
        "shape": shape.to_dict(),
        "measured": {
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "host": socket.gethostname(),
            "backend": backend_name, "backend_reason": reason, "device": m.describe.get("device"),
            "device_text": m.device_text, "params_total": m.describe.get("params_total"),
            "specc_version": __version__, "steps": steps, "warmup_steps": warmup,
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "from_run": f"{run.experiment}/{run.name}", "threads": intra_op_threads(backend_name),
            "cpu_share": round(cpu_share, 3) if cpu_share is not None else None,
        },
        "throughput": {"tokens_per_s": tokens_per_s, "step_s": step_s,
                       "step_s_stdev": statistics.pstdev(step_times) if len(step_times) > 1 else 0.0,
                       "tokens_per_step": statistics.fmean(r["tokens"] for r in step_records)},
        "overheads": {"import_s": import_s, "model_load_s": backend.seconds.get("setup", 0.0),
                      "data_s": max(0.0, m.open_s - backend.seconds.get("setup", 0.0)), "data_tokens": m.tokens_per_epoch,
                      "warmup_extra_s": warmup_extra, "eval_prepare_s": m.eval_prepare_s, "eval_batch_s": eval_batch_s,
                      "checkpoint_s": checkpoint_s, "export_s": export_s, "step_overhead_s": step_overhead,
                      "finish_s": finish_s},
        "memory": memory_parts(run.config, records, m),
        "generation": m.generation,
        "data": {"train": data.get("train"), "valid": data.get("valid"), "format": data.get("format"),
                 "stride": data.get("stride"), "batches_per_epoch": m.batches_per_epoch,
                 "tokens_per_epoch": m.tokens_per_epoch,
                 "tokens_per_step": statistics.fmean(r["tokens"] for r in step_records),
                 "valid_batches": m.valid_batches, **eval_sample_limit(run.config["training"]),
                 "examples": m.split_examples},
    }


GENERATE_PROBE = (32, 16)   # prompts of up to 32 tokens, 16 new tokens each (no early stop): the decode rate


def measure_generation(session) -> dict | None:
    """New tokens per second when the backend answers a batch of prompts (what task scoring costs), on prompts cut
    from this run's own evaluation rows; the adapter is as training left it."""
    from backends.protocol import GenerationSettings

    batches = session.data.eval_batches("valid") or []
    prompts = []
    for b in batches:
        for ids, seg in zip(b.input_ids, b.segment_ids):
            row = [int(t) for t, s in zip(ids, seg) if s == 1][:GENERATE_PROBE[0]]
            if len(row) >= 2:
                prompts.append(row)
    prompts = prompts[:max(1, session.cfg.training.batch_size)]
    if not prompts or not hasattr(session.backend, "generate"):
        return None
    settings = GenerationSettings(max_new_tokens=GENERATE_PROBE[1], batch_size=len(prompts),
                                  pad_id=session.data.pad_id)
    session.backend.generate(prompts[:1], GenerationSettings(max_new_tokens=2, pad_id=session.data.pad_id))  # warm-up
    t0 = time.perf_counter()
    out = session.backend.generate(prompts, settings)
    seconds = time.perf_counter() - t0
    new = sum(len(o) for o in out)
    return {"tokens_per_s": new / seconds if seconds > 0 else None, "new_tokens": new, "seconds": round(seconds, 4),
            "batch": len(prompts), "prompt_tokens": GENERATE_PROBE[0], "max_new_tokens": GENERATE_PROBE[1]}
