"""Time and memory estimates, each with the source it came from, and fitting a run to its time window.

Sources, in order of preference (the seeds' lesson: an estimate with no data behind it was off 15×):

1. calibration: `specc calibrate` measured this exact run shape on the target device key
   (calibrations/<key>.json): step time, tokens/s, peak memory and the fixed overheads (startup,
   evaluation per batch, checkpoint and export time), so the whole wall time is predicted;
2. prior: a run in runs/ that finished as planned (completed or early-stopped, never extended: see
   measurement_problem) with the same device key, backend, quantization, dtype and device kind, of the
   same shape or scaled to this one and marked so (`specc plan` only: `specc compile` reads committed
   inputs alone); its memory keeps its fixed part and scales only the rest (prior_memory);
3. declared: the profile's figure (profiles.py), labelled "declared, unmeasured".

Time is tokens / throughput, plus (when measured) the overheads around the steps. `wall_s` is what
summary.json's wall_s measures (first evaluation to summary); `total_s` adds the startup before it
(interpreter, imports, model load, tokenization), i.e. what a SLURM job needs.

Pure Python: no torch, no transformers. Facts that need the data (exact steps, tokens) come in through
`RunFacts`, which `specc plan` fills from the real tokenizer and `specc compile` from the spec.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from specc.lifecycle.calibrations import CalibrationFile
from specc.lifecycle.shape import RunShape, device_key, params_from_label, shape_of_config
from specc.spec.profiles import PROFILES

MEMORY_TARGET = 0.70          # the seeds: size the batch for 70% of GPU memory
TIME_SAFETY = 0.10            # a measured estimate is padded by 10% before it sets a time limit
QUANT_BYTES = {"nf4": 0.55, "none": 2.0}   # bytes per base weight (nf4 ≈ 4.4 bits with its scales)


@dataclass(frozen=True)
class RunFacts:
    """What the run will do, independent of the hardware."""
    steps: int | None
    steps_source: str
    tokens: float | None                # non-padding tokens fed (throughput counts these)
    tokens_source: str
    tokens_per_step: float | None
    valid: bool                         # has a validation split: evaluations happen
    eval_batches: int | None            # batches per evaluation
    data_tokens: float | None = None    # train tokens per epoch (setup time scales with it)
    exact: bool = False                 # from the real tokenizer (specc plan), not from the spec


@dataclass(frozen=True)
class Estimate:
    run: str
    source: str                         # calibration | prior | declared | none
    source_text: str
    steps: int | None = None
    tokens: float | None = None
    tokens_source: str = ""
    tokens_per_s: float | None = None
    train_s: float | None = None        # tokens / throughput
    overhead_s: float = 0.0             # evaluations, checkpoints, exports, warm-up, per-step bookkeeping
    setup_s: float = 0.0                # before the first step: imports, model load, tokenization
    correction: float | None = None     # median past time_accuracy applied (estimated / actual)
    peak_mem_gb: float | None = None
    mem_source: str = ""
    fixed_mem_gb: float | None = None   # the part of the peak a batch does not grow (weights, state, runtime)
    step_s: float | None = None         # measured seconds per optimizer step
    checkpoint_s: float | None = None   # measured seconds per checkpoint
    parts: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    shape_key: str = ""
    device_key: str = ""
    calibrated_at: str = ""             # the calibration entry's measured.at (a newer calibration supersedes it)

    @property
    def wall_s(self) -> float | None:
        """What summary.json's wall_s will read."""
        if self.train_s is None:
            return None
        raw = self.train_s + self.overhead_s
        return raw / self.correction if self.correction else raw

    @property
    def total_s(self) -> float | None:
        """The whole job: startup + wall."""
        w = self.wall_s
        return None if w is None else w + self.setup_s

    @property
    def measured(self) -> bool:
        return self.source in ("calibration", "prior")

    def to_config(self) -> dict:
        """The `estimate` block of config.json (summary.json copies it; `specc report` compares)."""
        d = {"source": self.source, "source_text": self.source_text, "device_key": self.device_key,
             "shape_key": self.shape_key}
        if self.source == "none":
            return d
        d.update({
            "steps": self.steps, "tokens": _r(self.tokens), "tokens_source": self.tokens_source,
            "tokens_per_s": _r(self.tokens_per_s), "train_s": _r(self.train_s), "overhead_s": _r(self.overhead_s),
            "setup_s": _r(self.setup_s), "wall_s": _r(self.wall_s), "total_s": _r(self.total_s),
            "raw_wall_s": _r(self.train_s + self.overhead_s) if self.train_s is not None else None,
            "correction": _r(self.correction), "peak_mem_gb": _r(self.peak_mem_gb), "mem_source": self.mem_source,
        })
        if self.calibrated_at:
            d["calibrated_at"] = self.calibrated_at
        return d


def _r(x):
    return None if x is None else float(f"{x:.4g}")


# --- facts from a config (compile time: the spec alone) ---------------------------------------------

def n_evaluations(steps: int, eval_every: int) -> int:
    """The loop evaluates at step 0, every eval_every steps, and at the last step."""
    return 1 + steps // eval_every + (1 if steps % eval_every else 0)


def n_checkpoints(steps: int, checkpoint_every: int) -> int:
    """Every checkpoint_every steps, plus the final one when the last step is not a multiple."""
    return -(-steps // checkpoint_every)


def _same_data(entry: dict | None, config: dict) -> bool:
    if not entry:
        return False
    d, data = entry.get("data") or {}, config["data"]
    return (d.get("train") == data.get("train") and d.get("format") == data.get("format")
            and d.get("stride") == data.get("stride") and d.get("valid") == data.get("valid"))


def planned_eval_batches(training: dict) -> int | None:
    """Batches per evaluation as far as the config tells: training.eval_examples at one example per row
    (an upper bound: packing makes fewer), or an older config's eval_batches; None = the whole split."""
    if "eval_examples" in training:
        n = training.get("eval_examples")
        return -(-int(n) // int(training["batch_size"])) if n else None
    return training.get("eval_batches")


def same_eval_sample(cal_data: dict, training: dict) -> bool:
    """Did the calibration evaluate the sample this config asks for (so its valid_batches hold)?"""
    if "eval_examples" in training:
        return "eval_examples" in cal_data and cal_data["eval_examples"] == training.get("eval_examples")
    return cal_data.get("eval_batches_limit") == training.get("eval_batches")


def facts_from_config(config: dict, entry: dict | None = None) -> RunFacts:
    """Steps and tokens as far as the spec (and a calibration of the same data) tell."""
    t, d = config["training"], config["data"]
    budget = t["batch_size"] * t["grad_accum"] * d["max_length"]
    steps, steps_source = t.get("total_steps"), t.get("total_steps_source") or "declared"
    valid = bool(d.get("valid"))
    eval_batches = planned_eval_batches(t)
    cal = (entry or {}).get("data") or {}
    same = _same_data(entry, config)
    if same and same_eval_sample(cal, t) and cal.get("valid_batches") is not None:
        eval_batches = cal["valid_batches"]
    data_tokens = cal.get("tokens_per_epoch") if same else None
    if config.get("kind") == "control":
        return RunFacts(0, "control: evaluation only", 0.0, "control", None, valid, eval_batches, data_tokens)
    if same and t.get("max_steps") is None and cal.get("batches_per_epoch"):
        epochs = float(t["epochs"])
        steps = max(1, int(round(cal["batches_per_epoch"] * epochs)) // t["grad_accum"])
        steps_source = f"{epochs:g} epochs × {cal['batches_per_epoch']} batches per epoch (calibrated data)"
    if same and cal.get("tokens_per_step") and steps is not None:
        tps = float(cal["tokens_per_step"])
        return RunFacts(steps, steps_source, steps * tps, f"{steps:,} steps × {tps:,.0f} tokens per step "
                        "(measured on this data)", tps, valid, eval_batches, data_tokens)
    if d.get("samples") and d.get("avg_tokens") and t.get("epochs"):
        tokens = d["samples"] * d["avg_tokens"] * float(t["epochs"])
        src = f"{d['samples']:,} samples × {d['avg_tokens']:g} tokens × {float(t['epochs']):g} epochs (declared)"
        return RunFacts(steps, steps_source, tokens, src, tokens / steps if steps else None, valid, eval_batches,
                        d["samples"] * d["avg_tokens"])
    if steps is not None:
        return RunFacts(steps, steps_source, float(steps * budget),
                        f"{steps:,} steps × {budget:,} tokens (batch × accum × max_length: an upper bound, rows full)",
                        float(budget), valid, eval_batches)
    return RunFacts(None, steps_source, None, "unknown until the data is tokenized", None, valid, eval_batches)


# --- the estimate ----------------------------------------------------------------------------------

def estimate_run(config: dict, *, calibration: CalibrationFile | None = None, facts: RunFacts | None = None,
                 priors: list["Prior"] | None = None, new_params: float | None = None,
                 new_arch: dict | None = None) -> Estimate:
    """The best estimate available for one run (a resolved config dict), with its source."""
    shape = shape_of_config(config)
    dkey = device_key(config["resources"])
    entry = calibration.entry(shape.key) if calibration else None
    facts = facts or facts_from_config(config, entry)
    base = dict(run=config["run"], shape_key=shape.key, device_key=dkey, steps=facts.steps,
                tokens=facts.tokens, tokens_source=facts.tokens_source)
    if entry is not None:
        return _from_calibration(config, entry, facts, calibration, base)
    if config.get("kind") == "control":
        return Estimate(**base, source="none", source_text="control run: evaluation only, no training steps")
    if priors:
        est = _from_priors(config, shape, dkey, facts, priors, new_params, new_arch, base, calibration)
        if est is not None:
            return est
        est = _from_profile(config, facts, base, calibration)
        return replace(est, notes=est.notes + _unused_priors(config, shape, dkey, priors))
    return _from_profile(config, facts, base, calibration)


def _from_calibration(config: dict, entry: dict, facts: RunFacts, cal: CalibrationFile, base: dict) -> Estimate:
    thr, ovh, mem, meas = entry["throughput"], entry["overheads"], entry.get("memory") or {}, entry.get("measured") or {}
    t = config["training"]
    source_text = (f"calibration: measured {meas.get('at', '?')[:10]} on {meas.get('device_text') or meas.get('backend', '?')} "
                   f"({cal.path.as_posix()})")
    tokens_per_s, step_s = float(thr["tokens_per_s"]), float(thr["step_s"])
    notes = []
    if facts.steps is not None:
        # A step of this shape takes step_s whatever the text (packed rows are full width): time follows the steps.
        steps = facts.steps
        train_s = steps * step_s
        tokens = facts.tokens
        if not (facts.exact or _same_data(entry, config)) and thr.get("tokens_per_step"):
            tokens = steps * float(thr["tokens_per_step"])
            base = {**base, "tokens_source": f"{steps:,} steps × {float(thr['tokens_per_step']):,.0f} tokens per step "
                                             "(measured at calibration)"}
    elif facts.tokens is not None:
        tokens, train_s = facts.tokens, facts.tokens / tokens_per_s
        steps = None
    else:
        return Estimate(**{**base, "source": "none", "source_text": source_text + "; but the number of steps is unknown "
                           "until the data is tokenized (run `specc plan` where the data is)"})
    parts = {"steps": train_s}
    if config.get("kind") == "control":
        nb = facts.eval_batches or 0
        parts = {"evaluation": ovh.get("eval_prepare_s", 0) + 2 * nb * ovh.get("eval_batch_s", 0)}
        train_s = 0.0
    elif steps is not None:
        parts["warm-up"] = ovh.get("warmup_extra_s", 0.0)
        parts["per-step bookkeeping"] = steps * ovh.get("step_overhead_s", 0.0)
        if facts.valid:
            n_ev = n_evaluations(steps, t["eval_every"])
            nb = facts.eval_batches if facts.eval_batches is not None else planned_eval_batches(t) or 0
            parts["evaluations"] = ovh.get("eval_prepare_s", 0.0) + n_ev * nb * ovh.get("eval_batch_s", 0.0)
            parts["best/ exports"] = (n_ev - 1) * ovh.get("export_s", 0.0)   # at most: every evaluation improves
        parts["checkpoints"] = n_checkpoints(steps, t["checkpoint_every"]) * ovh.get("checkpoint_s", 0.0)
        parts["final export + summary"] = ovh.get("export_s", 0.0) + ovh.get("finish_s", 0.0)
    overhead = sum(v for k, v in parts.items() if k != "steps")
    data_s = ovh.get("data_s", 0.0)
    if facts.data_tokens and ovh.get("data_tokens"):
        data_s *= facts.data_tokens / ovh["data_tokens"]
    setup = ovh.get("import_s", 0.0) + ovh.get("model_load_s", 0.0) + data_s
    parts["startup (before wall_s)"] = setup
    correction, n = cal.correction(base["shape_key"], "calibration")
    if correction:
        source_text += f"; corrected by the median time accuracy of {n} earlier run(s) of this shape ({correction:.2f})"
    peak, fixed = mem.get("peak_mb"), mem.get("fixed_mb")
    return Estimate(**{**base, "steps": steps, "tokens": tokens}, source="calibration", source_text=source_text,
                    fixed_mem_gb=fixed / 1024 if peak and fixed else None,
                    tokens_per_s=tokens_per_s, train_s=train_s, overhead_s=overhead, setup_s=setup,
                    correction=correction, peak_mem_gb=peak / 1024 if peak else None, step_s=step_s,
                    checkpoint_s=ovh.get("checkpoint_s"), calibrated_at=str(meas.get("at") or ""),
                    mem_source=f"calibration ({mem.get('source', '?')})" if peak else "", parts=parts, notes=tuple(notes))


def _from_profile(config: dict, facts: RunFacts, base: dict, cal: CalibrationFile | None = None) -> Estimate:
    profile = PROFILES.get(config.get("profile") or "custom")
    if profile is None or profile.declared_tokens_per_s is None:
        return Estimate(**base, source="none", source_text="no calibration, no matching prior run and no declared "
                        "figure (profile custom)")
    src = f"declared by profile {profile.name} ({profile.declared_tokens_per_s:g} tok/s, H100 12B QLoRA), unmeasured"
    if facts.tokens is None:
        return Estimate(**base, source="none", source_text=src + "; the token count is unknown until the data is tokenized")
    train_s = facts.tokens / profile.declared_tokens_per_s
    notes = ["steps only: evaluations, checkpoints and startup are not in a declared figure"]
    correction, n = cal.correction(base["shape_key"], "declared") if cal else (None, 0)
    if correction:
        src += f"; corrected by the median time accuracy of {n} earlier run(s) of this shape ({correction:.2f})"
    return Estimate(**base, source="declared", source_text=src, tokens_per_s=profile.declared_tokens_per_s,
                    train_s=train_s, peak_mem_gb=profile.declared_mem_gb, correction=correction,
                    mem_source=f"declared by profile {profile.name}, unmeasured" if profile.declared_mem_gb else "",
                    parts={"steps": train_s}, notes=tuple(notes))


# --- evidence: which finished runs measured what they were planned to do -----------------------------

FINISHED = ("completed", "early_stopped")


def was_extended(summary: dict, config: dict | None = None) -> bool:
    """Did the run train past the steps it was planned (and estimated) for (--extend-steps, continuation
    strategy extend)? From summary.json's history; an old summary without one is extended when its
    total_steps differs from the config's."""
    if summary.get("extended"):
        return True
    history = summary.get("history")
    if isinstance(history, list) and any(isinstance(h, dict) and h.get("kind") == "extend" for h in history):
        return True
    if "history" in summary or "extended" in summary:
        return False
    planned = ((config or {}).get("training") or {}).get("total_steps")
    total = summary.get("total_steps")
    return planned is not None and total is not None and int(total) != int(planned)


def _extension_text(summary: dict, config: dict | None) -> str:
    ext = [h for h in summary.get("history") or [] if isinstance(h, dict) and h.get("kind") == "extend"]
    if ext:
        return f"extended at step {ext[0].get('step')} to {ext[-1].get('total_steps')} steps"
    planned = ((config or {}).get("training") or {}).get("total_steps")
    return f"extended: it ran to {summary.get('total_steps')} steps, planned for {planned}"


def measurement_problem(summary: dict | None, config: dict | None = None) -> str | None:
    """Why a run's measured time and speed must not be used as evidence (a prior, a time accuracy); None
    when they may. Only runs that completed or early-stopped without an extension measured the run they
    were planned as: an interrupted run stopped part-way, a failed or diverged one broke off, and an
    extended one trained more steps than estimated, its wall time including the earlier attempt's."""
    if not summary:
        return "no summary.json: still running, or killed before it finished"
    status = summary.get("status")
    if status not in FINISHED:
        return f"it did not finish (status {status or 'unknown'})"
    if was_extended(summary, config):
        return f"it was {_extension_text(summary, config)}: its times cover more steps than were planned and estimated"
    return None


# --- priors: finished runs in runs/ ------------------------------------------------------------------

@dataclass(frozen=True)
class Prior:
    run: str                    # "<experiment>/<run>"
    shape: RunShape
    device_key: str
    params: float | None
    arch: dict | None           # hidden_size, num_hidden_layers when the model dir was readable
    tokens_per_s: float
    train_s: float
    wall_s: float
    peak_mem_mb: float | None
    status: str
    backend: str | None = None          # the backend that ran (summary.json), not the spec's "auto"
    device: str | None = None           # the device it ran on: "cpu", "cuda:0", "gpu" (summary.json device)
    between_steps_mb: float | None = None   # the least memory held between steps (metrics.jsonl mem_mb)

    @property
    def device_class(self) -> str | None:
        return device_class(self.device)

    def label(self) -> str:
        return f"{self.backend or 'backend ?'} on {self.device or 'an unrecorded device'}, {self.status}"


def device_class(device) -> str | None:
    """cpu | cuda | gpu (Metal/MPS) | None when unrecorded."""
    d = str(device or "").lower()
    if not d:
        return None
    if d.startswith("cuda"):
        return "cuda"
    if "cpu" in d:
        return "cpu"
    if "gpu" in d or "mps" in d or "metal" in d:
        return "gpu"
    return d


def load_priors(runs_root: Path = Path("runs")) -> list[Prior]:
    """Every run in runs/ that finished as planned (see measurement_problem), newest last."""
    found = []
    if not runs_root.is_dir():
        return found
    for summary_path in sorted(runs_root.glob("*/*/summary.json"), key=lambda p: p.stat().st_mtime):
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            config = json.loads((summary_path.parent / "config.json").read_text(encoding="utf-8"))
            shape = shape_of_config(config)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if summary.get("kind") == "control" or not summary.get("tokens_per_s") or not summary.get("train_s"):
            continue
        if measurement_problem(summary, config) is not None:
            continue
        device = summary.get("device") if isinstance(summary.get("device"), dict) else {}
        params = device.get("params_total") or params_from_label(config["model"].get("size"))
        found.append(Prior(f"{summary_path.parent.parent.name}/{summary_path.parent.name}", shape,
                           device_key(config.get("resources") or {}), float(params) if params else None,
                           _arch(config["model"]["path"]), float(summary["tokens_per_s"]), float(summary["train_s"]),
                           float(summary.get("wall_s") or summary["train_s"]), summary.get("peak_mem_mb"),
                           summary.get("status", "?"), summary.get("backend") or device.get("backend"),
                           device.get("device"), _between_steps_mb(summary_path.parent / "metrics.jsonl")))
    return found


def _between_steps_mb(metrics: Path, first: int = 50) -> float | None:
    """The least memory the run held after a step (weights, adapter, optimizer state; on a CPU the
    process' RSS), over its first `first` steps: the part of the peak that a batch does not grow."""
    seen, least = 0, None
    try:
        with open(metrics, encoding="utf-8") as fh:
            for line in fh:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                mem = r.get("mem_mb") if isinstance(r, dict) and "loss" in r else None
                if isinstance(mem, (int, float)) and mem > 0:
                    least = mem if least is None else min(least, mem)
                    seen += 1
                    if seen >= first:
                        break
    except OSError:
        return None
    return float(least) if least is not None else None


def _arch(model_path: str) -> dict | None:
    if model_path.startswith("builtin:"):
        return None
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        return {"hidden_size": cfg["hidden_size"], "num_hidden_layers": cfg["num_hidden_layers"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def flops_per_token(params: float, seq_len: int, arch: dict | None) -> float:
    """6P for the weights (forward + backward) plus attention, 12 · layers · hidden · L (Kaplan et al.)."""
    attn = 12 * arch["num_hidden_layers"] * arch["hidden_size"] * seq_len if arch else 0
    return 6 * params + attn


def expected_backend(config: dict) -> str | None:
    """The backend a run will use: the spec's, or for `auto` on GPUs torch (CUDA); None when only the
    machine that runs it can tell (auto on a CPU key: torch on Linux, mlx on Apple silicon)."""
    b = str(config.get("backend") or "auto")
    if b != "auto":
        return b
    return "torch" if (config.get("resources") or {}).get("gpus") else None


def prior_mismatch(prior: Prior, config: dict, shape: RunShape, dkey: str) -> str | None:
    """Why a prior cannot stand for this run (another device, backend, quantization, dtype, gradient
    checkpointing), or None. Other shape differences are scaled and named in the estimate's source."""
    if prior.device_key != dkey:
        return f"device key {prior.device_key}, this run {dkey}"
    want = expected_backend(config)
    if want is not None and prior.backend != want:
        return f"backend {prior.backend or 'unrecorded'}, this run {want}"
    if want is None and prior.shape.backend != "auto":
        return f"backend {prior.shape.backend} in its spec; this run's `auto` may choose another"
    for what in ("quantization", "dtype", "gradient_checkpointing"):
        if getattr(prior.shape, what) != getattr(shape, what):
            return f"{what} {getattr(prior.shape, what)}, this run {getattr(shape, what)}"
    cls, on_gpus = prior.device_class, bool((config.get("resources") or {}).get("gpus"))
    if cls is not None:
        if on_gpus and cls == "cpu":
            return f"it ran on the CPU ({prior.device}); this run targets GPUs"
        if not on_gpus and cls != "cpu" and (prior.backend or want) == "torch":
            return f"it ran on {prior.device}; this run targets the CPU"
    return None


SHAPE_FIELDS = (("model", "model"), ("max_length", "max_length"), ("batch_size", "batch"), ("grad_accum", "accum"),
                ("lora_rank", "LoRA rank"), ("lora_targets", "LoRA targets"), ("lora_layers", "LoRA layers"),
                ("packing", "packing"))


def shape_differences(old: RunShape, new: RunShape) -> list[str]:
    """'max_length 256 → 512', … : what differs between a prior's shape and this run's."""
    out = []
    for attr, label in SHAPE_FIELDS:
        a, b = getattr(old, attr), getattr(new, attr)
        if attr == "lora_targets":
            a, b = ",".join(sorted(a)) or "default", ",".join(sorted(b)) or "default"
        if a != b:
            out.append(f"{label} {a} → {b}")
    return out


def _pick_prior(usable: list[Prior], shape: RunShape, new_params) -> Prior | None:
    exact = [p for p in usable if p.shape == shape]
    if exact:
        return exact[-1]
    same_model = [p for p in usable if p.shape.model == shape.model]
    if same_model:
        return min(same_model, key=lambda p: (abs(math.log(p.shape.max_length / shape.max_length)),
                                              abs(math.log(p.shape.batch_size / shape.batch_size))))
    if new_params:
        scaled = [p for p in usable if p.params]
        if scaled:
            return min(scaled, key=lambda p: abs(math.log(p.params / new_params)))
    return None


def _from_priors(config, shape: RunShape, dkey: str, facts: RunFacts, priors: list[Prior], new_params, new_arch,
                 base: dict, calibration: CalibrationFile | None = None) -> Estimate | None:
    usable = [p for p in priors if prior_mismatch(p, config, shape, dkey) is None]
    prior = _pick_prior(usable, shape, new_params)
    if prior is None:
        return None
    same_model = prior.shape.model == shape.model
    params = new_params or (prior.params if same_model else None)
    arch = new_arch or (prior.arch if same_model else None)
    scale = _flop_ratio(prior, params, arch, shape.max_length)
    diffs = shape_differences(prior.shape, shape)
    if not same_model and prior.params and params:
        diffs.append(f"{prior.params / 1e9:.3g}B → {params / 1e9:.3g}B parameters")
    how = "same shape" if not diffs else "shape differs: " + ", ".join(diffs) + (
        f"; throughput scaled ×{scale:.3g} by FLOPs per token" if scale != 1 else
        "; throughput not scaled (no change in FLOPs per token is known)")
    src = f"prior run {prior.run} ({prior.label()}; {prior.tokens_per_s:,.0f} tok/s; {how})"
    if facts.tokens is None:
        return Estimate(**base, source="none", source_text=src + "; the token count is unknown")
    tokens_per_s = prior.tokens_per_s * scale
    train_s = facts.tokens / tokens_per_s
    overhead_ratio = max(1.0, prior.wall_s / prior.train_s)
    peak_mb, fixed_mb, mem_source = prior_memory(prior, shape, params, calibration)
    return Estimate(**base, source="prior", source_text=src, tokens_per_s=tokens_per_s, train_s=train_s,
                    overhead_s=train_s * (overhead_ratio - 1), peak_mem_gb=peak_mb / 1024 if peak_mb else None,
                    mem_source=mem_source, fixed_mem_gb=fixed_mb / 1024 if peak_mb and fixed_mb else None,
                    parts={"steps": train_s, "evaluations, checkpoints (prior's wall/train ratio)": train_s * (overhead_ratio - 1)},
                    notes=("startup (model load, tokenization) is not in a prior's wall_s",))


def _unused_priors(config: dict, shape: RunShape, dkey: str, priors: list[Prior], most: int = 3) -> tuple[str, ...]:
    """Why the finished runs of this device key could not serve as priors (the first few)."""
    why = [(p.run, prior_mismatch(p, config, shape, dkey)) for p in reversed(priors) if p.device_key == dkey]
    why = [(run, w) for run, w in why if w]
    if not why:
        return ()
    text = "; ".join(f"{run}: {w}" for run, w in why[:most]) + (f"; and {len(why) - most} more" if len(why) > most else "")
    return (f"prior runs not used: {text}",)


def _flop_ratio(prior: Prior, new_params, new_arch, new_len: int) -> float:
    if not prior.params or not new_params:
        return 1.0
    return flops_per_token(prior.params, prior.shape.max_length, prior.arch) / flops_per_token(new_params, new_len, new_arch)


def _calibrated_fixed_mb(calibration: CalibrationFile | None, prior: Prior) -> tuple[float | None, str]:
    """Memory held right after the model loaded, measured by `specc calibrate` for the prior's model."""
    if calibration is None:
        return None, ""
    for key, entry in calibration.entries.items():
        s, mem = entry.get("shape") or {}, entry.get("memory") or {}
        same = all(s.get(f) == getattr(prior.shape, f) for f in ("backend", "model", "quantization", "dtype"))
        ran = (entry.get("measured") or {}).get("backend")
        if same and mem.get("fixed_mb") and (prior.backend is None or ran in (None, prior.backend)):
            return float(mem["fixed_mb"]), f"after model load, calibration {calibration.path.as_posix()}"
    return None, ""


def _weights_mb(params: float | None, quantization: str) -> float:
    return (params or 0.0) * QUANT_BYTES.get(quantization, 2.0) / 2**20


def prior_memory(prior: Prior, shape: RunShape, new_params, calibration: CalibrationFile | None = None
                 ) -> tuple[float | None, float | None, str]:
    """(peak MB, its fixed part in MB, the source) for `shape` from a prior's measured peak.

    The fixed part (weights, adapter and optimizer state, the runtime: measured by a calibration of the
    prior's model after load, else the least memory between the prior's steps, else the weights alone)
    stays; only the rest, the activations, scales with batch × max_length (and, for another model, with
    its size^(2/3)). Weights follow the parameters at the quantization's bytes per weight."""
    peak = prior.peak_mem_mb
    if not peak:
        return None, None, ""
    p_old = prior.params or 0.0
    p_new = new_params or p_old
    fixed, fixed_src = _calibrated_fixed_mb(calibration, prior)
    if fixed is None and prior.between_steps_mb:
        fixed, fixed_src = prior.between_steps_mb, "the least held between its steps, metrics.jsonl"
    if fixed is None:
        fixed, fixed_src = _weights_mb(p_old, prior.shape.quantization), "its weights, from the parameter count"
    fixed = min(float(fixed), float(peak))
    if prior.shape == shape and p_new == p_old:
        return float(peak), fixed, f"prior run {prior.run} (its measured peak; fixed part {fixed:,.0f} MB, {fixed_src})"
    variable = float(peak) - fixed
    ratio = (shape.batch_size * shape.max_length) / (prior.shape.batch_size * prior.shape.max_length)
    size = (p_new / p_old) ** (2 / 3) if p_old and p_new else 1.0
    fixed_new = fixed
    if p_new != p_old:   # another model: keep the runtime, swap the weights
        fixed_new = max(0.0, fixed - _weights_mb(p_old, prior.shape.quantization)) + _weights_mb(p_new, shape.quantization)
    total = fixed_new + variable * ratio * size
    text = (f"prior run {prior.run}: fixed {fixed_new:,.0f} MB ({fixed_src}"
            + (", weights rescaled" if p_new != p_old else "") + f") + the rest of its peak, {variable:,.0f} MB, "
            f"× {ratio:.3g} (batch × max_length)" + (f" × {size:.3g} (model size^2/3)" if size != 1 else "")
            + " (scaled)")
    return total, fixed_new, text


# --- fitting a window and a GPU ----------------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    fits: bool | None           # None: no estimate
    budget_s: float | None      # window - margin
    need_s: float | None
    text: str
    suggestions: tuple[str, ...] = ()


def fit_window(config: dict, est: Estimate, window_hours: float | None, margin_hours: float,
               time_limit_s: float | None = None) -> Fit:
    """Does the run fit its window (window - margin)? If not, what would make it fit."""
    if window_hours:
        budget, what = (window_hours - margin_hours) * 3600, f"{window_hours:g} h window − {margin_hours:g} h margin"
    elif time_limit_s:
        # The margin belongs to a window; against a bare time limit keep at most a tenth of it in hand.
        held = min(margin_hours * 3600, 0.1 * time_limit_s)
        budget, what = time_limit_s - held, f"time limit {_h(time_limit_s)} − {_h(held)} held back"
    else:
        return Fit(None, None, est.total_s, "no window or time limit to fit")
    need = est.total_s
    if need is None:
        return Fit(None, budget, None, f"cannot tell: no estimate ({est.source_text})")
    label = f"{_h(need)} of {_h(budget)} ({what}, {100 * need / budget:.0f}% used)" if budget > 0 else what
    if need <= budget:
        return Fit(True, budget, need, f"fits: {label}")
    suggestions = []
    t = config["training"]
    fixed = est.setup_s
    variable = need - fixed
    room = budget - fixed
    if room > 0 and variable > 0:
        share = room / variable
        if t.get("epochs"):
            suggestions.append(f"train {math.floor(float(t['epochs']) * share * 10) / 10:g} epochs instead of "
                               f"{float(t['epochs']):g}")
        elif t.get("max_steps"):
            suggestions.append(f"train {int(t['max_steps'] * share):,} steps instead of {t['max_steps']:,}")
    if window_hours:
        suggestions.append(f"ask for a window of {math.ceil((need / 3600 + margin_hours) * 4) / 4:g} h "
                           f"(estimate + {margin_hours:g} h margin)")
    else:
        suggestions.append(f"ask for a time limit of at least {_h(need / 0.9)}")
    if est.source == "declared":
        for name in ("fast", "balanced", "quality", "memory_efficient"):
            p = PROFILES[name]
            if name != config.get("profile") and p.declared_tokens_per_s and est.tokens:
                alt = est.tokens / p.declared_tokens_per_s
                if alt <= budget:
                    suggestions.append(f"profile {name} (declared {p.declared_tokens_per_s:g} tok/s): {_h(alt)}")
    else:
        suggestions.append("a faster shape: calibrate a larger batch or shorter max_length (`specc calibrate`)")
    return Fit(False, budget, need, f"does NOT fit: needs {label}", tuple(suggestions))


def recommend_batch(est: Estimate, gpu_memory_gb: float | None, batch_size: int, grad_accum: int,
                    fixed_gb: float | None = None) -> tuple[int, int, str] | None:
    """(batch, accum, why): the largest batch that keeps measured peak memory under 70% of the GPU,
    with accumulation keeping the effective batch (batch × accum) where it was."""
    if not gpu_memory_gb or not est.peak_mem_gb or not est.measured:
        return None
    target = MEMORY_TARGET * gpu_memory_gb
    peak = est.peak_mem_gb
    if fixed_gb is None:
        fixed_gb = est.fixed_mem_gb
    if fixed_gb is not None and 0 < fixed_gb < peak:
        per_row = (peak - fixed_gb) / batch_size
        best = max(1, int((target - fixed_gb) / per_row))
        how = f"(70% of {gpu_memory_gb:g} GB − {fixed_gb:.1f} GB fixed) / {per_row:.2f} GB per row"
    else:   # the seeds' rule: headroom = GPU / peak, × 0.7
        best = max(1, int(batch_size * target / peak))
        how = f"{batch_size} × 70% × {gpu_memory_gb:g} GB / {peak:.1f} GB measured peak"
    effective = batch_size * grad_accum
    best = min(best, effective) if effective >= best else best
    accum = max(1, round(effective / best))
    return best, accum, f"batch {best} × accum {accum}: {how} ({est.mem_source})"


def gpu_hours(total_s: float | None, gpus: int) -> float | None:
    return None if total_s is None else total_s / 3600 * max(gpus, 0)


def _h(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


fmt_duration = _h
