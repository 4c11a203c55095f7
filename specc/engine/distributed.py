"""Data-parallel training across processes, and nothing at all in a single process.

Launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by srun with one task
per GPU (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, plus MASTER_ADDR/MASTER_PORT from the job script),
every rank runs the same engine on the same data stream. Per optimizer step the engine builds all
W × grad_accum micro-batches and rank r takes every W-th; the backend sums gradients across ranks
before clipping, so every rank applies the same update. Losses are summed for logging, rank 0 writes
files (metrics, checkpoints, adapters, summary), and a stop asked of any rank (a signal) is agreed by all.

In a single process every helper returns at once and torch is never imported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from specc.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world = World()


def _env_world() -> World:
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:                       # torchrun (or any env:// launcher)
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env and "MASTER_ADDR" in env:   # srun
        return World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return World()


def init() -> World:
    """Join the process group when launched as several ranks (idempotent); return this process's place."""
    global _world
    w = _env_world()
    if not w.active:
        _world = w
        return w
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")
        if "MASTER_ADDR" not in os.environ:
            raise UserError(f"rank {w.rank} of {w.size}: MASTER_ADDR is not set, so the ranks cannot meet",
                            hint="launch with torchrun, or under srun with MASTER_ADDR/MASTER_PORT exported (the job script does)")
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(w.local_rank % torch.cuda.device_count())   # "cuda" is now this rank's GPU
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=w.rank, world_size=w.size)
    _world = w
    return w


def world() -> World:
    return _world


def all_reduce_sum(values: list[float]) -> list[float]:
    """Elementwise sum of a few floats over the ranks (float64 on the host)."""
    if not _world.active:
        return list(values)
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier() -> None:
    if _world.active:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    global _world
    if _world.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _world = World()
