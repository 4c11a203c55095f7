"""The estimate of one run, from the best source available (the seeds' lesson: an estimate with no
data behind it was off 15×):

1. calibration: `specc calibrate` measured this exact run shape on the target device key
   (calibrations/<key>.json): step time, tokens/s, peak memory and the fixed overheads (startup,
   evaluation per batch, checkpoint and export time), so the whole wall time is predicted;
2. prior: a finished run in runs/ (priors.py; `specc plan` only);
3. declared: the profile's figure (specc/spec/profiles.py), labelled "declared, unmeasured".

Time is tokens / throughput, plus (when measured) the overheads around the steps. `wall_s` is what
summary.json's wall_s measures (first evaluation to summary); `total_s` adds the startup before it
(interpreter, imports, model load, tokenization), i.e. what a SLURM job needs.
"""
from __future__ import annotations

from dataclasses import replace

from specc.estimate.calibrations import CalibrationFile
from specc.estimate.facts import (
    facts_from_config,
    n_checkpoints,
    n_evaluations,
    planned_eval_batches,
    same_data,
)
from specc.estimate.priors import Prior, estimate_from_priors, unused_priors
from specc.estimate.result import Estimate, RunFacts
from specc.estimate.scoring import scoring_seconds
from specc.estimate.shape import device_key, shape_of_config
from specc.spec.profiles import PROFILES


def estimate_run(config: dict, *, calibration: CalibrationFile | None = None, facts: RunFacts | None = None,
                 priors: list[Prior] | None = None, new_params: float | None = None,
                 new_arch: dict | None = None) -> Estimate:
    """The best estimate available for one run (a resolved config dict), with its source."""
    shape = shape_of_config(config)
    dkey = device_key(config["resources"])
    entry = calibration.entry(shape.key) if calibration else None
    if entry is None and calibration and config.get("kind") == "control":
        entry = _same_model_entry(calibration, shape)   # a control run evaluates what its training runs calibrated
    facts = facts or facts_from_config(config, entry)
    base = dict(run=config["run"], shape_key=shape.key, device_key=dkey, steps=facts.steps,
                tokens=facts.tokens, tokens_source=facts.tokens_source)
    if entry is not None:
        return _from_calibration(config, entry, facts, calibration, base)
    if config.get("kind") == "control":
        return Estimate(**base, source="none", source_text="control run: evaluation only, no training steps")
    if priors:
        est = estimate_from_priors(config, shape, dkey, facts, priors, new_params, new_arch, base, calibration)
        if est is not None:
            return est
        est = _from_profile(config, facts, base, calibration)
        return replace(est, notes=est.notes + unused_priors(config, shape, dkey, priors))
    return _from_profile(config, facts, base, calibration)


def _same_model_entry(calibration: CalibrationFile, shape) -> dict | None:
    from specc.estimate.shape import RunShape

    for entry in calibration.entries.values():
        try:
            other = RunShape(**entry["shape"])
        except (KeyError, TypeError):
            continue
        if other.same_model(shape) and other.backend == shape.backend:
            return entry
    return None


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
        if not (facts.exact or same_data(entry, config)) and thr.get("tokens_per_step"):
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
        source_text += "; a control run: the evaluation of the same model's calibration"
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
    scoring, scoring_notes = scoring_seconds(config, entry, steps)
    parts.update(scoring)
    notes += scoring_notes
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
