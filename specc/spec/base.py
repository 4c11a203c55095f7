"""What every spec section shares: strict models, and names that may reach an sbatch script."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Strict(BaseModel):
    # No inf/nan: `epochs: .inf` would otherwise pass `gt=0` and crash the planner.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_name(v: str) -> str:
    # Cluster, partition, QoS and GPU-type names reach #SBATCH lines: a newline would end one.
    if CONTROL.search(v):
        raise ValueError(f"{v!r} contains control characters (newline, tab, ...)")
    return v


# A name that may reach an sbatch script.
Name = Annotated[str, Field(min_length=1), AfterValidator(plain_name)]
