"""How long scoring a run's evaluation tasks takes: new tokens to generate ÷ the decode rate `specc calibrate`
measured (calibrations/<key>.json "generation"). An upper bound: answers that stop at eos or a stop string
early generate fewer tokens."""
from __future__ import annotations


def scoring_seconds(config: dict, entry: dict, steps: int | None) -> tuple[dict[str, float], list[str]]:
    """({part name: seconds}, notes) for the tasks scored after training (or by a control run) and during it."""
    tasks = ((config.get("evaluation") or {}).get("tasks")) or []
    if not tasks:
        return {}, []
    gen = (entry or {}).get("generation") or {}
    rate = gen.get("tokens_per_s")
    if not rate:
        return {}, ["task scoring is not in the figure: this calibration did not measure generation "
                    "(calibrate again with this specc)"]
    sizes = ((entry or {}).get("data") or {}).get("examples") or {}
    after = during = 0.0
    unknown = []
    for t in tasks:
        n = t.get("limit") or sizes.get(t.get("split", "test"))
        if n is None:
            unknown.append(t["name"])
            continue
        n = min(n, sizes.get(t.get("split", "test"), n))
        after += n * t["max_new_tokens"] / rate
        if t.get("every") and steps and config.get("kind") != "control":
            during += (steps // t["every"]) * min(t.get("every_limit", 32), n) * t["max_new_tokens"] / rate
    parts = {"task scoring after training" if config.get("kind") != "control" else "task scoring": after}
    if during:
        parts["task scoring during training"] = during
    notes = [f"task scoring at {rate:,.0f} generated tokens/s (calibration), at most max_new_tokens per answer"]
    if unknown:
        notes.append(f"tasks {', '.join(unknown)}: the split's size is unknown to the calibration, not in the figure")
    return parts, notes
