"""Field types every spec section shares: the strict base model, slugs, sbatch-safe names, SLURM times."""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SLUG = re.compile(r"^[A-Za-z0-9._-]+$")
TIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):(\d{2})(?::(\d{2}))?$")
MEM = re.compile(r"^\d+(?:\.\d+)?[KMGT]?$")


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


@lru_cache(maxsize=1024)
def parse_time(value: str) -> int:
    """SLURM time 'D-HH:MM:SS', 'HH:MM:SS' or 'HH:MM' → seconds."""
    m = TIME.match(value.strip())
    if not m:
        raise ValueError(f"time {value!r} is not D-HH:MM:SS, HH:MM:SS or HH:MM")
    days, hours, minutes, seconds = (int(x) if x else 0 for x in m.groups())
    if minutes >= 60 or seconds >= 60:
        raise ValueError(f"time {value!r}: minutes and seconds must be < 60")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _slurm_time(value: str) -> str:
    parse_time(value)
    return value


# A SLURM time limit, D-HH:MM:SS, HH:MM:SS or HH:MM (checked, kept as written).
SlurmTime = Annotated[str, AfterValidator(_slurm_time)]


def format_time(seconds: int) -> str:
    """Seconds → SLURM 'D-HH:MM:SS' (or 'HH:MM:SS' under a day)."""
    seconds = max(0, int(math.ceil(seconds)))
    days, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"
