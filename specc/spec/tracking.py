"""The spec's `tracking` section: where runs are logged besides metrics.jsonl (MLflow, Weights & Biases)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from specc.spec.fields import Name, Strict


class MlflowTracking(Strict):
    uri: Name = Field(description="the tracking server (http://host:5000) or store (sqlite:///mlflow.db, a directory)")
    experiment: Name | None = Field(None, description="the MLflow experiment; default: the spec's experiment name")


class WandbTracking(Strict):
    project: Name = Field(description="the W&B project")
    entity: Name | None = None
    mode: Literal["offline", "online"] = Field("offline", description="offline: written under the run directory "
                                               "(wandb/), synced later with `wandb sync`")


class Tracking(Strict):
    mlflow: MlflowTracking | None = None
    wandb: WandbTracking | None = None
