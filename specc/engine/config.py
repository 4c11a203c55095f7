"""The resolved trainer config a run consumes: generated/<exp>/<run>/config.json, or a spec planned on the fly."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from specc.errors import UserError, staged
from specc.plan.schedule import ScheduleSpec
from specc.spec.evaluation import Evaluation
from specc.spec.model import Continuation, Data, Model, Training


@dataclass(frozen=True)
class RunConfig:
    raw: dict
    experiment: str
    run: str
    kind: str                   # "train" | "control"
    backend: str                # "auto" | "torch" | "mlx"
    output_dir: Path
    model: Model
    data: Data
    training: Training
    total_steps: int | None     # None: computed from epochs at run start
    schedule: ScheduleSpec | None
    test_max_steps: int | None
    continuation: Continuation | None
    source: str
    evaluation: Evaluation | None = None      # the tasks scored from generation (spec.evaluation)

    def for_stage(self, stage: str | None) -> "RunConfig":
        """The test stage is the same run, cut short, in its own directory (<run>.test)."""
        if stage is None:
            return self
        if stage != "test" or self.test_max_steps is None:
            raise UserError(f"this run has no {stage!r} stage", hint="add stages.test to the spec, or drop --stage")
        from dataclasses import replace

        steps = self.test_max_steps
        sched = self.schedule
        if sched is not None and not sched.start_step:
            sched = replace(sched, total_steps=steps, warmup_steps=min(sched.warmup_steps, steps - 1))
        # The test stage is step-bounded even when the full run counts epochs.
        training = self.training.model_copy(update={"max_steps": steps, "epochs": None})
        return replace(self, run=f"{self.run}.test", output_dir=self.output_dir.with_name(self.output_dir.name + ".test"),
                       training=training, total_steps=steps, schedule=sched, test_max_steps=None)


def from_dict(raw: dict, source: str) -> RunConfig:
    """Validate a config dict (from config.json or the planner) into a RunConfig."""
    try:
        if raw.get("format_version") != 1:
            raise UserError(f"{source}: unsupported config format {raw.get('format_version')!r}",
                            hint="recompile with this version of specc: `specc compile SPEC`")
        training = {k: v for k, v in raw["training"].items()
                    if k not in ("total_steps", "total_steps_source", "total_steps_key")}
        stages = raw.get("stages") or {}
        return RunConfig(
            raw=raw, experiment=raw["experiment"], run=raw["run"], kind=raw["kind"], backend=raw["backend"],
            output_dir=Path(raw["output_dir"]), model=Model.model_validate(raw["model"]),
            data=Data.model_validate(raw["data"]), training=Training.model_validate(training),
            total_steps=raw["training"].get("total_steps"),
            schedule=ScheduleSpec(**raw["schedule"]) if raw.get("schedule") else None,
            test_max_steps=(stages.get("test") or {}).get("max_steps"),
            continuation=Continuation.model_validate(raw["continuation"]) if raw.get("continuation") else None,
            evaluation=Evaluation.model_validate(raw["evaluation"]) if raw.get("evaluation") else None,
            source=source,
        )
    except (KeyError, TypeError, ValidationError, ValueError) as exc:
        raise UserError(f"{source}: not a valid specc run config ({type(exc).__name__}: {exc})".splitlines()[0],
                        hint="regenerate it with `specc compile SPEC`, or run the spec itself: `specc run SPEC`") from None


@staged("run")
def load_run_config(target: Path, run: str | None) -> RunConfig:
    """`specc run` accepts a compiled config.json or a spec (then --run picks one of its runs)."""
    if not target.exists():
        raise UserError(f"{target}: no such file", hint="pass a spec (specs/x.yaml) or generated/<exp>/<run>/config.json")
    if target.suffix == ".json":
        try:
            raw = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{target}: cannot read the run config: {exc}",
                            hint="regenerate it with `specc compile SPEC`") from None
        if not isinstance(raw, dict):
            raise UserError(f"{target}: the run config must be a JSON object", hint="regenerate it with `specc compile SPEC`")
        return from_dict(raw, str(target))
    from specc.plan.runs import plan_experiment
    from specc.spec.validate import load_spec

    plan = plan_experiment(load_spec(target))
    names = [r.name for r in plan.runs]
    training = [r for r in plan.runs if r.kind == "train"]
    if run is None and len(training) > 1:
        raise UserError(f"{target} has {len(names)} runs; choose one with --run",
                        hint="runs: " + ", ".join(names) + "; or run them all with `specc run SPEC --all`, "
                             "or submit them with `specc submit`")
    # One training run (plus its control runs): that run is the default.
    chosen = training[0] if run is None and training else next((r for r in plan.runs if r.name == run), None)
    if chosen is None:
        raise UserError(f"{target} has no run {run!r}", hint="runs: " + ", ".join(names))
    return from_dict(dict(chosen.config, source=str(target)), str(target))
