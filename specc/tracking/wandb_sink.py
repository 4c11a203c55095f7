"""Weights & Biases: the same content as MLflow (config as params, hypothesis as notes, metrics by step, the
report), in offline mode by default: written under <run>/wandb/, to be synced later with `wandb sync`.

The W&B run id lives in <run>/tracking.json with the last step it holds, so a resumed run continues the
same run id and never logs a step twice. Needs the `tracking` extra (pip install 'specc[tracking]').
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from specc.tracking import read_state, write_state
from specc.tracking.params import description, flat_params, hypothesis_tags, metric_points
from specc.tracking.wandb_log import held_through


def _wandb(mode: str):
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")    # the run log is the run's own, not W&B's
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
    try:
        import wandb
    except ImportError:
        raise RuntimeError("the wandb package is not installed (pip install 'specc[tracking]')") from None
    return wandb


def _init(section: dict, run_dir: Path, run_id: str, name: str, group: str, **extra):
    wandb = _wandb(section.get("mode", "offline"))
    return wandb.init(project=section["project"], entity=section.get("entity"), id=run_id, name=name, group=group,
                      dir=str(run_dir), mode=section.get("mode", "offline"), resume="allow", **extra)


class WandbSink:
    name = "wandb"

    def __init__(self, section: dict, run_dir: Path):
        self.section = section
        self.run_dir = Path(run_dir)
        self.run = None
        self.run_id: str | None = None
        self.last = -1          # the last step the W&B run holds
        self.logged = 0

    def open(self, config: dict, resumed: bool) -> None:
        state = read_state(self.run_dir).get("wandb") or {}
        self.run_id = state.get("id") or secrets.token_hex(6)   # W&B ids: lowercase letters and digits
        mode = self.section.get("mode", "offline")
        # Offline, the log itself says what it holds (W&B's service loses unwritten lines when we are killed).
        self.last = held_through(self.run_dir / "wandb", self.run_id) if mode == "offline" and state.get("id") \
            else int(state.get("logged_through", -1))
        self.run = _init(self.section, self.run_dir, self.run_id, str(config.get("run")), str(config.get("experiment")),
                         config={**flat_params(config), **hypothesis_tags(config)}, notes=description(config))
        self._save()

    def _save(self) -> None:
        write_state(self.run_dir, {**read_state(self.run_dir), "wandb": {
            "id": self.run_id, "project": self.section["project"], "mode": self.section.get("mode", "offline"),
            "dir": str(self.run_dir / "wandb"), "logged_through": self.last}})

    def log(self, records: list[dict]) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for record in records:
            for key, value, _, step in metric_points(record):
                if step > self.last:
                    by_step.setdefault(step, {})[key] = value
        for step in sorted(by_step):
            self.run.log(by_step[step], step=step)
            self.logged += len(by_step[step])
        if by_step:
            self.last = max(by_step)
            self._save()

    def close(self, status: str | None) -> None:
        if self.run is not None:
            self.run.summary["specc.status"] = status or "aborted"
            self.run.finish(exit_code=0 if status in ("completed", "early_stopped") else 1)
            self.run = None

    def where(self) -> dict:
        return {"project": self.section["project"], "mode": self.section.get("mode", "offline"), "run_id": self.run_id,
                "dir": str(self.run_dir / "wandb"), "metrics_logged": self.logged}


def log_report(section: dict, run_dir: Path, tags: dict[str, str], metrics: dict[str, float],
               artifacts: list[Path]) -> None:
    """Verdicts and estimate accuracy into the W&B run's summary, report.md and the plots as an artifact."""
    state = read_state(run_dir).get("wandb") or {}
    if not state.get("id"):
        raise RuntimeError(f"{run_dir} has no W&B run recorded (tracking.json)")
    wandb = _wandb(section.get("mode", "offline"))
    run = _init(section, Path(run_dir), state["id"], Path(run_dir).name, Path(run_dir).parent.name)
    run.summary.update({**tags, **metrics})
    artifact = wandb.Artifact(f"report-{Path(run_dir).name}", type="report")
    for path in artifacts:
        artifact.add_file(str(path), name=("" if path.suffix == ".md" else "plots/") + path.name)
    run.log_artifact(artifact)
    run.finish()
