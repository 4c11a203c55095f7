"""The clusters catalog: partitions, QoS and GPU types with their limits."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from pydantic import Field, ValidationError

from specc.errors import SpecError
from specc.spec.jobenv import JobSettings
from specc.spec.loader import load_yaml, load_yaml_text
from specc.spec.model import Name, SlurmTime, Strict, parse_time


class TimeLimited(Strict):
    max_time: SlurmTime

    @property
    def max_seconds(self) -> int:
        return parse_time(self.max_time)


class Partition(TimeLimited):
    gpus_per_node: int = Field(0, ge=0)
    gpu_type: Name | None = None
    cpus_per_node: int = Field(1, ge=1)
    mem_gb: float = Field(1, gt=0)
    nodes: int = Field(1, ge=1)
    starts_fast: bool = False


class Qos(TimeLimited):
    pass


class GpuType(Strict):
    memory_gb: float = Field(gt=0)


class Cluster(Strict):
    description: str = ""
    partitions: dict[Name, Partition] = Field(min_length=1)
    qos: dict[Name, Qos] = Field(default_factory=dict)
    gpu_types: dict[Name, GpuType] = Field(default_factory=dict)
    defaults: JobSettings = Field(default_factory=JobSettings, description="the cluster's account, constraint, mail, "
                                  "env, setup lines and extra sbatch options; a spec's resources add to or override them")

    def qos_for(self, seconds: int) -> str | None:
        """The QoS with the smallest limit that still covers `seconds` (short ≤ 24 h, long ≤ 72 h)."""
        fitting = sorted((q.max_seconds, name) for name, q in self.qos.items() if q.max_seconds >= seconds)
        return fitting[0][1] if fitting else None


class Catalog(Strict):
    clusters: dict[Name, Cluster] = Field(min_length=1)


def _parse(located) -> Catalog:
    from specc.spec.validate import pydantic_issues

    try:
        return Catalog.model_validate(located.data)
    except ValidationError as exc:
        raise SpecError(pydantic_issues(exc, located, Catalog)) from None


@lru_cache(maxsize=None)
def builtin_catalog() -> Catalog:
    text = resources.files("specc.spec").joinpath("clusters.yaml").read_text(encoding="utf-8")
    return _parse(load_yaml_text(text, "<builtin clusters.yaml>"))


@lru_cache(maxsize=32)
def _load_catalog_file(path: str, mtime_ns: int) -> Catalog:
    return _parse(load_yaml(Path(path)))


def load_catalog(spec_path: Path | None, explicit: str | None) -> tuple[Catalog, str]:
    """The catalog a spec uses, and where it came from."""
    if explicit:
        path = (spec_path.parent / explicit) if spec_path and not Path(explicit).is_absolute() else Path(explicit)
        return _load_catalog_file(str(path), path.stat().st_mtime_ns if path.exists() else 0), str(path)
    if spec_path is not None:
        beside = spec_path.parent / "clusters.yaml"
        if beside.exists():
            return _load_catalog_file(str(beside), beside.stat().st_mtime_ns), str(beside)
    return builtin_catalog(), "builtin"
