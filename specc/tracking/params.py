"""What a run tells a tracker: its resolved config as flat params, its hypothesis as tags, its metrics lines."""
from __future__ import annotations

import json
import math

SECTIONS = ("model", "data", "training", "resources", "sweep_point", "schedule", "continuation")
SKIPPED = {"resources.settings_from", "resources.choices", "training.total_steps_key"}


def flat_params(config: dict) -> dict[str, str]:
    """The resolved config, flattened to dotted keys (lists as JSON), values cut at 500 characters."""
    out = {k: str(config.get(k)) for k in ("experiment", "run", "kind", "backend", "profile")}

    def walk(prefix: str, value) -> None:
        if prefix in SKIPPED:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            out[prefix] = text[:500]

    for section in SECTIONS:
        if isinstance(config.get(section), dict):
            walk(section, config[section])
    return out


def hypothesis_tags(config: dict) -> dict[str, str]:
    hyp = config.get("hypothesis") or {}
    tags = {"specc.experiment": str(config.get("experiment")), "specc.run": str(config.get("run")),
            "specc.kind": str(config.get("kind"))}
    if hyp.get("statement"):
        tags["specc.hypothesis"] = hyp["statement"].strip()[:5000]
    for i, e in enumerate(hyp.get("expected") or []):
        tags[f"specc.expected.{i}"] = expectation_text(e)
    if hyp.get("falsified_if"):
        tags["specc.falsified_if"] = str(hyp["falsified_if"])[:5000]
    return tags


def expectation_text(e: dict) -> str:
    tol = f" ±{e.get('tolerance'):g}{' (relative)' if e.get('relative') else ''}" if e.get("tolerance") else ""
    return f"{e['metric']} {e['comparator']} {e['target']:g}{' × baseline' if e.get('vs_baseline') else ''}{tol}"


def description(config: dict) -> str:
    """The run's description (MLflow's note): the hypothesis and what it expects."""
    hyp = config.get("hypothesis") or {}
    lines = [f"**Hypothesis** ({config.get('experiment')}/{config.get('run')}): {str(hyp.get('statement', '')).strip()}"]
    lines += [f"- expected: {expectation_text(e)}" for e in hyp.get("expected") or []]
    if hyp.get("falsified_if"):
        lines.append(f"- falsified if: {hyp['falsified_if']}")
    return "\n".join(lines)


def metric_points(record: dict) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) for every finite number of a metrics line that is not an event."""
    if "event" in record:
        return []
    step, ms = int(record.get("step", 0)), int(round(float(record.get("t", 0)) * 1000))
    return [(k, float(v), ms, step) for k, v in record.items()
            if k not in ("step", "t") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
