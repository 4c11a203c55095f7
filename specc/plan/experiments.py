"""Plan several specs at once: every problem of every spec reported together, experiment names unique."""
from __future__ import annotations

from pathlib import Path

from specc.errors import SpecError, UserError


def plan_specs(paths: list[Path], counted: dict | None = None) -> list:
    """[(LoadedSpec, ExperimentPlan)] for every spec, or one SpecError listing the problems of all of them."""
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    plans, issues = [], []
    for path in paths:
        try:
            loaded = load_spec(path)
            plans.append((loaded, plan_experiment(loaded, counted)))
        except SpecError as exc:
            issues += exc.issues
            stage = exc.stage
    if issues:
        raise SpecError(issues, stage=stage)
    seen: dict[str, Path] = {}
    for loaded, plan in plans:
        if plan.experiment in seen:
            raise UserError(f"experiment {plan.experiment!r} is defined by both {seen[plan.experiment]} and {loaded.path}",
                            hint="experiment names must be unique: they are directories under generated/ and runs/",
                            stage="plan")
        seen[plan.experiment] = loaded.path
    return plans
