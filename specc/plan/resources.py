"""Resolve a run's resources against the clusters catalog, at compile time, not in the queue."""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from specc.errors import SpecIssue
from specc.plan.jobenv import resolve_job_settings
from specc.spec.clusters import Catalog, Cluster
from specc.spec.loader import Located
from specc.spec.model import Spec, format_time, parse_time

DEFAULT_SIGNAL_LEAD_S = 180   # until a checkpoint time is measured: generous for a LoRA adapter save
CONTROL_TIME_S = 1800         # an eval-only control run until its evaluation is estimated (a calibration)


@dataclass(frozen=True)
class ResolvedResources:
    cluster: str
    partition: str
    qos: str | None
    gpus: int
    gpu_type: str | None
    nodes: int
    cpus: int
    mem: str
    time: str
    time_source: str
    choices: tuple[tuple[str, str, str | None], ...]   # (cluster, partition, qos) in order of preference
    max_requeues: int
    signal_lead_s: int
    signal_lead_source: str
    # The job settings (plan/jobenv.py): the spec's resources over the cluster's defaults.
    account: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    mail_user: str | None = None
    mail_type: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    setup: tuple[str, ...] = ()
    extra_sbatch: tuple[tuple[str, str], ...] = ()
    settings_from: tuple[tuple[str, str], ...] = ()      # field (env.NAME, setup.2, ...) → "spec" | "cluster X"

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in _FIELDS}   # every value is a scalar but these (asdict deep-copies: slow)
        d["choices"] = [list(c) for c in self.choices]
        for f in ("env", "extra_sbatch", "settings_from"):
            d[f] = dict(d[f])
        d["setup"] = list(self.setup)
        return d

    @property
    def job_shape(self) -> tuple:
        """What the #SBATCH lines and the script's environment depend on: runs of one shape share a job array."""
        return tuple(getattr(self, f) for f in _FIELDS if f not in ("time_source", "signal_lead_source",
                                                                    "settings_from"))


_FIELDS = tuple(f.name for f in fields(ResolvedResources))


def mem_gb(mem: str) -> float:
    m = re.match(r"^(\d+(?:\.\d+)?)([KMGT]?)$", mem)
    value, unit = float(m.group(1)), m.group(2) or "M"   # SLURM's default unit is megabytes
    return value * {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024}[unit]


def _default_partition(cluster: Cluster, test: bool) -> str:
    names = list(cluster.partitions)
    if test:
        fast = [n for n in names if cluster.partitions[n].starts_fast]
        return fast[0] if fast else names[0]

    def size(n):   # full runs prefer the largest GPUs, then the longest limit
        p = cluster.partitions[n]
        gpu_mem = cluster.gpu_types[p.gpu_type].memory_gb if p.gpu_type in cluster.gpu_types else 0
        return (-gpu_mem, -p.max_seconds, names.index(n))
    slow = [n for n in names if not cluster.partitions[n].starts_fast] or names
    return sorted(slow, key=size)[0]


def resolve_resources(spec: Spec, catalog: Catalog, located: Located, issues: list[SpecIssue], *,
                      stage: str | None, run: str) -> ResolvedResources:
    """Pick partition, QoS and time for a run (or its test stage) and check them against the catalog."""
    r = spec.resources
    test = spec.stages.test if stage == "test" else None
    label = f"run {run}" + (" (test stage)" if test else "")
    at = ("stages", "test") if test else ("resources",)

    def bad(path, msg):
        issues.append(located.issue(path, f"{label}: {msg}"))

    # A test stage does not inherit the full run's partition or choices: it prefers one that starts now.
    raw_choices = test.choices if test else r.choices
    choices = [(c.cluster or r.cluster, c.partition, c.qos) for c in raw_choices]
    if r.cluster not in catalog.clusters:
        bad(("resources", "cluster"), f"cluster {r.cluster!r} is not in the catalog (known: {', '.join(catalog.clusters)})")
        return _placeholder(r)
    cluster = catalog.clusters[r.cluster]
    partition = test.partition if test else r.partition
    if partition is None:
        partition = choices[0][1] if choices and choices[0][0] == r.cluster else _default_partition(cluster, bool(test))
    for cname, pname, _ in choices:
        if cname not in catalog.clusters or pname not in catalog.clusters[cname].partitions:
            bad(at + ("choices",), f"choice {cname}/{pname} is not in the catalog")
    if partition not in cluster.partitions:
        where = at + ("partition",) if test and test.partition else ("resources", "partition")
        bad(where, f"partition {partition!r} is not in cluster {r.cluster!r} (known: {', '.join(cluster.partitions)})")
        return _placeholder(r)
    part = cluster.partitions[partition]

    if test:
        time, time_source = test.time, "stages.test.time"
    elif r.time:
        time, time_source = r.time, "resources.time"
    elif r.window_hours:
        time, time_source = format_time(r.window_hours * 3600), f"resources.window_hours ({r.window_hours:g} h)"
    else:
        time, time_source = part.max_time, f"partition {partition} maximum"
    seconds = parse_time(time)
    # Where the time limit came from: that is the line to fix.
    time_at = at + ("time",) if test else ("resources", "time" if r.time else "window_hours" if r.window_hours else "partition")
    over_partition = seconds > part.max_seconds
    if over_partition:
        bad(time_at, f"time limit {time} exceeds partition {partition}'s maximum {part.max_time}")

    qos = r.qos
    if qos is not None and cluster.qos and qos not in cluster.qos:
        bad(("resources", "qos"), f"QoS {qos!r} is not defined for cluster {r.cluster!r} (known: {', '.join(cluster.qos)})")
    elif qos is not None and qos in cluster.qos and seconds > cluster.qos[qos].max_seconds:
        bad(("resources", "qos"), f"time limit {time} exceeds QoS {qos}'s maximum {cluster.qos[qos].max_time}")
    elif qos is None and cluster.qos:
        qos = cluster.qos_for(seconds)
        if qos is None and not over_partition:   # one mistake, one message
            longest = max(cluster.qos.values(), key=lambda q: q.max_seconds).max_time
            bad(time_at, f"time limit {time} exceeds every QoS of {r.cluster} (longest {longest})")

    if r.nodes > part.nodes:
        bad(("resources", "nodes"), f"{r.nodes} nodes requested, partition {partition} has {part.nodes}")
    if r.gpus > part.gpus_per_node * r.nodes:
        bad(("resources", "gpus"), f"{r.gpus} GPUs requested, partition {partition} has {part.gpus_per_node} per node × {r.nodes} node(s)")
    if r.gpu_type and part.gpu_type and r.gpu_type != part.gpu_type:
        bad(("resources", "gpu_type"), f"GPU type {r.gpu_type!r} requested, partition {partition} has {part.gpu_type!r}")
    if r.cpus > part.cpus_per_node:
        bad(("resources", "cpus"), f"{r.cpus} CPUs per task requested, partition {partition} nodes have {part.cpus_per_node}")
    if mem_gb(r.mem) > part.mem_gb:
        bad(("resources", "mem"), f"memory {r.mem} requested, partition {partition} nodes have {part.mem_gb:g} GB")

    if r.signal_lead_s is not None:
        lead, lead_source = r.signal_lead_s, "resources.signal_lead_s"
    else:
        lead, lead_source = min(DEFAULT_SIGNAL_LEAD_S, max(10, seconds // 4)), "default (no checkpoint time measured yet)"
    if not choices:
        choices = [(r.cluster, partition, qos)]
    return ResolvedResources(r.cluster, partition, qos, r.gpus, r.gpu_type or part.gpu_type, r.nodes, r.cpus, r.mem,
                             time, time_source, tuple(choices), r.max_requeues, int(lead), lead_source,
                             **resolve_job_settings(r, r.cluster, cluster))


def _placeholder(r) -> ResolvedResources:
    return ResolvedResources(r.cluster, r.partition or "?", r.qos, r.gpus, r.gpu_type, r.nodes, r.cpus, r.mem,
                             r.time or "00:00:00", "unresolved", (), r.max_requeues, 0, "unresolved")


def control_resources(res: ResolvedResources, catalog: Catalog) -> ResolvedResources:
    """An eval-only control run's job: one GPU at most, one node, and its own short limit.

    The limit is CONTROL_TIME_S (or the training runs' limit, if shorter) until the evaluation is estimated
    (estimate/attach.py sets it from a calibration); the evaluation is the base model's validation (and test)
    loss, which needs neither several ranks nor the training runs' hours."""
    cluster = catalog.clusters.get(res.cluster)
    part = cluster.partitions.get(res.partition) if cluster else None
    cap = min(parse_time(res.time), part.max_seconds if part else parse_time(res.time))
    seconds = min(CONTROL_TIME_S, cap)
    source = (f"eval-only control run: {format_time(seconds)} until its evaluation is estimated "
              "(`specc calibrate` measures it)")
    explicit = res.signal_lead_source == "resources.signal_lead_s"
    lead = res.signal_lead_s if explicit else min(DEFAULT_SIGNAL_LEAD_S, max(10, seconds // 4))
    return replace(res, gpus=min(res.gpus, 1), nodes=1, time=format_time(seconds), time_source=source,
                   signal_lead_s=int(lead), signal_lead_source=res.signal_lead_source)
