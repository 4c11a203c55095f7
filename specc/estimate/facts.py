"""What a run will do as far as its config (and a calibration of the same data) tells: steps, tokens,
evaluations and checkpoints. `specc compile` has nothing more; `specc plan` replaces these facts with
ones from the real tokenizer (specc/lifecycle/analysis.py)."""
from __future__ import annotations

from specc.estimate.result import RunFacts


def n_evaluations(steps: int, eval_every: int) -> int:
    """The loop evaluates at step 0, every eval_every steps, and at the last step."""
    return 1 + steps // eval_every + (1 if steps % eval_every else 0)


def n_checkpoints(steps: int, checkpoint_every: int) -> int:
    """Every checkpoint_every steps, plus the final one when the last step is not a multiple."""
    return -(-steps // checkpoint_every)


def same_data(entry: dict | None, config: dict) -> bool:
    """Was the calibration entry measured on this config's data (so its data facts hold)?"""
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


def eval_sample_limit(training: dict) -> dict:
    """What a calibration records of the evaluation sample's size (same_eval_sample compares it)."""
    if "eval_examples" in training:
        return {"eval_examples": training.get("eval_examples")}
    return {"eval_batches_limit": training.get("eval_batches")}


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
    same = same_data(entry, config)
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
