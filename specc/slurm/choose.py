"""Which (cluster, partition) a job goes to: the seeds' decision tree, made real.

A stage lists (cluster, partition) choices in order of preference (resources.choices,
stages.test.choices). Without choices and without an explicit partition, every partition of the
cluster is a candidate: test runs prefer partitions that start at once (starts_fast), full runs the
largest GPUs, then the longest limit. The first candidate that *fits* the job (GPUs, memory, CPUs,
nodes, time) *and* has room now wins; if none has room, the job queues on the first that fits.

"Fits" is judged from the catalog and, for the cluster we are on, from `sinfo` (partition up, node
sizes, time limit); "room now" only from `sinfo` (idle CPUs, unallocated memory, unused GPUs on
enough nodes). Choices on other clusters cannot be seen from here: they are judged from the catalog
only, and never submitted to (run `specc submit` on that cluster).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable

from specc.plan.resources import ResolvedResources, mem_gb
from specc.plan.runs import RunPlan
from specc.spec.clusters import Catalog, Cluster
from specc.spec.model import parse_time

# Node states (sinfo %t, compact) in which a node takes new jobs.
USABLE_STATES = frozenset({"idle", "mix", "mixed"})


@dataclass(frozen=True)
class Need:
    """What one job asks for."""
    gpus: int
    gpu_type: str | None      # only when the spec names one (resources.gpu_type)
    nodes: int
    cpus: int                 # per task (one task per node)
    mem_mb: float             # per node
    seconds: int

    @property
    def gpus_per_node(self) -> int:
        return -(-self.gpus // self.nodes) if self.gpus else 0

    def describe(self) -> str:
        gpu = f"{self.gpus} GPU(s){' ' + self.gpu_type if self.gpu_type else ''}, " if self.gpus else ""
        return (f"{gpu}{self.nodes} node(s) × {self.cpus} CPU(s), {_mem_text(self.mem_mb)}, "
                f"{_time_text(self.seconds)}")


@dataclass(frozen=True)
class Node:
    """One (node, partition) line of `sinfo -N -O ...`."""
    name: str
    partition: str
    available: str            # "up", "down", "drain", "inact"
    state: str                # "idle", "mix", "alloc", "drain", "down*", ...
    cpus_idle: int
    cpus_total: int
    mem_mb: float             # configured (RealMemory)
    mem_alloc_mb: float
    gpus: dict[str, int]      # type ("" when untyped) → count
    gpus_used: dict[str, int]
    time_limit_s: int | None  # None: unlimited


@dataclass
class Verdict:
    cluster: str
    partition: str
    qos: str | None
    gpu_type: str | None          # the partition's GPU type (for --gres)
    fits: bool
    room: bool | None             # None: cannot be known from here
    live: bool                    # judged from sinfo (else from the catalog only)
    problems: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{self.cluster}/{self.partition}" + (f" (QoS {self.qos})" if self.qos else "")


@dataclass
class Decision:
    chosen: Verdict | None
    why: str
    verdicts: list[Verdict]
    current_cluster: str


# ------------------------------------------------------------------ parsing
def parse_slurm_time(text: str) -> int | None:
    """sinfo time limits: 'MM', 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS', 'infinite'."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")]
        parts += [0] * (3 - len(parts))          # D-HH → D-HH:00:00
        h, m, s = parts
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0            # MM
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]     # MM:SS
        else:
            h, m, s = parts
    return ((days * 24 + h) * 60 + m) * 60 + s


_GRES = re.compile(r"^([^:(]+)(?::([^:(]+))?(?::(\d+))?")


def parse_gres(text: str) -> dict[str, int]:
    """'gpu:a100:4(S:0-1),gpu:h100:2' → {'a100': 4, 'h100': 2}; 'gpu:2' → {'': 2}; '(null)' → {}."""
    out: dict[str, int] = {}
    for item in re.split(r",(?![^(]*\))", text.strip()):
        m = _GRES.match(item.strip())
        if not m or m.group(1) != "gpu":
            continue
        kind, count = m.group(2), m.group(3)
        if count is None and kind is not None and kind.isdigit():   # gpu:2
            kind, count = None, kind
        out[kind or ""] = out.get(kind or "", 0) + int(count or 1)
    return out


def _mem(text: str) -> float:
    text = text.strip()
    try:
        return float(text.rstrip("+"))
    except ValueError:
        return 0.0


def parse_sinfo_nodes(text: str) -> list[Node]:
    """Parse client.sinfo_nodes() output."""
    nodes = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 10 or not parts[0]:
            continue
        host, part, avail, state, cpus, mem, alloc, gres, used, limit = parts[:10]
        a, i, _o, t = (int(x) for x in cpus.split("/"))
        nodes.append(Node(host, part.rstrip("*"), avail.lower(), state.lower(), i, t, _mem(mem), _mem(alloc),
                          parse_gres(gres), parse_gres(used), parse_slurm_time(limit)))
    return nodes


# ----------------------------------------------------------------- judging
def need_of(res: ResolvedResources, gpu_type_requested: str | None) -> Need:
    return Need(gpus=res.gpus, gpu_type=gpu_type_requested, nodes=res.nodes, cpus=res.cpus,
                mem_mb=mem_gb(res.mem) * 1024, seconds=parse_time(res.time))


def judge_catalog(need: Need, cluster: Cluster, partition: str) -> list[str]:
    """Why PARTITION (of the catalog) cannot ever run the job; [] if it fits."""
    p = cluster.partitions.get(partition)
    if p is None:
        return [f"partition {partition} is not in the catalog"]
    problems = []
    if need.seconds > p.max_seconds:
        problems.append(f"time {_time_text(need.seconds)} > limit {p.max_time}")
    if need.nodes > p.nodes:
        problems.append(f"{need.nodes} nodes > {p.nodes}")
    if need.gpus_per_node > p.gpus_per_node:
        problems.append(f"{need.gpus_per_node} GPU(s) per node > {p.gpus_per_node}")
    if need.gpus and need.gpu_type and p.gpu_type and need.gpu_type != p.gpu_type:
        problems.append(f"GPU type {need.gpu_type} ≠ {p.gpu_type}")
    if need.cpus > p.cpus_per_node:
        problems.append(f"{need.cpus} CPUs > {p.cpus_per_node} per node")
    if need.mem_mb > p.mem_gb * 1024:
        problems.append(f"memory {_mem_text(need.mem_mb)} > {p.mem_gb:g} GB per node")
    return problems


def _gpus_of(counts: dict[str, int], gpu_type: str | None) -> int:
    return counts.get(gpu_type, 0) if gpu_type else sum(counts.values())


def judge_live(need: Need, nodes: list[Node], partition: str) -> tuple[list[str], bool, str]:
    """(problems that stop it from ever running, has room now, a short account) from sinfo's nodes."""
    mine = [n for n in nodes if n.partition == partition]
    if not mine:
        return [f"sinfo does not know partition {partition}"], False, ""
    if all(n.available != "up" for n in mine):
        return [f"partition {partition} is {mine[0].available}"], False, ""
    limit = mine[0].time_limit_s
    problems = []
    if limit is not None and need.seconds > limit:
        problems.append(f"time {_time_text(need.seconds)} > sinfo limit {_time_text(limit)}")
    big = [n for n in mine if n.cpus_total >= need.cpus and n.mem_mb >= need.mem_mb
           and _gpus_of(n.gpus, need.gpu_type) >= need.gpus_per_node]
    if len(big) < need.nodes:
        problems.append(f"{len(big)} of {len(mine)} node(s) are big enough for "
                        f"{need.cpus} CPU(s), {_mem_text(need.mem_mb)}"
                        + (f", {need.gpus_per_node} GPU(s)" if need.gpus else "") + f"; {need.nodes} needed")
    free = [n for n in big if n.state.rstrip("*~#!%$@^-") in USABLE_STATES
            and n.cpus_idle >= need.cpus and n.mem_mb - n.mem_alloc_mb >= need.mem_mb
            and _gpus_of(n.gpus, need.gpu_type) - _gpus_of(n.gpus_used, need.gpu_type) >= need.gpus_per_node]
    idle_cpus = sum(n.cpus_idle for n in mine)
    total_cpus = sum(n.cpus_total for n in mine)
    account = f"{len(free)} node(s) with room, {idle_cpus}/{total_cpus} CPUs idle"
    if need.gpus:
        idle_gpus = sum(_gpus_of(n.gpus, need.gpu_type) - _gpus_of(n.gpus_used, need.gpu_type) for n in mine)
        account += f", {idle_gpus}/{sum(_gpus_of(n.gpus, need.gpu_type) for n in mine)} GPUs free"
    return problems, not problems and len(free) >= need.nodes, account


def candidates(run: RunPlan, stage: str | None, catalog: Catalog) -> tuple[list[tuple[str, str, str | None]], str]:
    """(cluster, partition, qos) candidates in order of preference, and where the order came from."""
    spec = run.spec
    res = run.test_resources if stage == "test" else run.resources
    raw = spec.stages.test.choices if stage == "test" else spec.resources.choices
    if raw:
        return [(c.cluster or spec.resources.cluster, c.partition, c.qos) for c in raw], "the spec's choices"
    explicit = spec.stages.test.partition if stage == "test" else spec.resources.partition
    if explicit:
        return [(res.cluster, res.partition, res.qos)], "the spec's partition"
    cluster = catalog.clusters.get(res.cluster)
    if cluster is None:
        return [(res.cluster, res.partition, res.qos)], "the compiled partition"
    names = list(cluster.partitions)

    def gpu_mem(n):
        p = cluster.partitions[n]
        return cluster.gpu_types[p.gpu_type].memory_gb if p.gpu_type in cluster.gpu_types else 0

    if stage == "test":   # starts at once first, then the shortest limit (the least contended)
        order = sorted(names, key=lambda n: (not cluster.partitions[n].starts_fast, cluster.partitions[n].max_seconds,
                                             names.index(n)))
        why = "test runs prefer partitions that start at once"
    else:                 # the largest GPUs, then the longest limit; quick-start partitions last
        order = sorted(names, key=lambda n: (cluster.partitions[n].starts_fast, -gpu_mem(n),
                                             -cluster.partitions[n].gpus_per_node, -cluster.partitions[n].max_seconds,
                                             names.index(n)))
        why = "full runs prefer the largest GPUs, then the longest limit"
    return [(res.cluster, n, spec.resources.qos) for n in order], why


def current_cluster(default: str) -> str:
    """The cluster `sbatch` reaches from here: $SPECC_CLUSTER, else the spec's resources.cluster."""
    return os.environ.get("SPECC_CLUSTER") or default


def choose(run: RunPlan, stage: str | None, catalog: Catalog, *,
           sinfo: Callable[[list[str]], str] | None, here: str | None = None) -> Decision:
    """Decide where one job (a run, its test stage, or a sweep's array led by RUN) goes.

    `sinfo(partitions)` returns client.sinfo_nodes() text for the current cluster (None: do not ask).
    """
    res = run.test_resources if stage == "test" else run.resources
    need = need_of(res, run.spec.resources.gpu_type)
    here = here or current_cluster(run.spec.resources.cluster)
    cands, order_why = candidates(run, stage, catalog)
    live_nodes: list[Node] | None = None
    live_error = None
    local = sorted({p for c, p, _ in cands if c == here})
    if sinfo is not None and local:
        try:
            live_nodes = parse_sinfo_nodes(sinfo(local))
        except Exception as exc:   # unreachable controller, missing sinfo: fall back to the catalog
            live_error = str(exc).splitlines()[0]
    verdicts = []
    for cname, pname, qos in cands:
        cluster = catalog.clusters.get(cname)
        if cluster is None:
            verdicts.append(Verdict(cname, pname, qos, None, False, None, False, [f"cluster {cname} is not in the catalog"]))
            continue
        part = cluster.partitions.get(pname)
        problems = judge_catalog(need, cluster, pname)
        if qos is None and cluster.qos:
            qos = cluster.qos_for(need.seconds)
        elif qos is not None and qos in cluster.qos and need.seconds > cluster.qos[qos].max_seconds:
            problems.append(f"time {_time_text(need.seconds)} > QoS {qos}'s {cluster.qos[qos].max_time}")
        v = Verdict(cname, pname, qos, part.gpu_type if part else None, False, None, False, problems)
        if cname != here:
            v.detail = f"not this cluster ({here}): judged from the catalog only"
        elif live_nodes is not None:
            live_problems, room, account = judge_live(need, live_nodes, pname)
            v.problems += live_problems
            v.room, v.live, v.detail = room, True, account
        else:
            v.detail = "sinfo unavailable" + (f" ({live_error})" if live_error else "") + ": judged from the catalog only"
        v.fits = not v.problems
        verdicts.append(v)

    usable = [v for v in verdicts if v.fits and v.cluster == here]
    elsewhere = [v for v in verdicts if v.fits and v.cluster != here]
    with_room = [v for v in usable if v.room]
    if with_room:
        chosen = with_room[0]
        rank = "first choice" if chosen is verdicts[0] else f"choice {verdicts.index(chosen) + 1} of {len(verdicts)}"
        skipped = [v for v in verdicts[:verdicts.index(chosen)]]
        why = f"{rank} ({order_why}); it fits and has room now ({chosen.detail})"
        if skipped:
            why += "; skipped " + "; ".join(_skip_text(v) for v in skipped)
    elif usable:
        chosen = usable[0]
        why = (f"fits ({order_why}), queued: " + ("no choice has room now" if any(v.live for v in usable)
                                                  else chosen.detail or "room unknown"))
        if chosen.live:
            why += f" ({chosen.detail})"
        skipped = [v for v in verdicts[:verdicts.index(chosen)]]
        if skipped:
            why += "; skipped " + "; ".join(_skip_text(v) for v in skipped)
    else:
        chosen = None
        why = f"no choice on this cluster ({here}) fits {need.describe()}: " + "; ".join(_skip_text(v) for v in verdicts)
        if elsewhere:
            why += f". {elsewhere[0].label} fits (catalog only): run `specc submit` on {elsewhere[0].cluster}"
    return Decision(chosen, why, verdicts, here)


def _skip_text(v: Verdict) -> str:
    if v.problems:
        return f"{v.label}: " + ", ".join(v.problems)
    if v.cluster and v.detail.startswith("not this cluster"):
        return f"{v.label}: {v.detail}"
    return f"{v.label}: no room now ({v.detail})" if v.live else f"{v.label}: {v.detail}"


def _mem_text(mb: float) -> str:
    return f"{mb / 1024:g} GB" if mb >= 1024 else f"{math.ceil(mb)} MB"


def _time_text(seconds: int) -> str:
    from specc.spec.model import format_time
    return format_time(seconds)
