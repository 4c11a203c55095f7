"""Optimization profiles from the seeds' 12-hour-window guide (H100, 12B base, bf16 QLoRA).

A profile sets batch size, gradient accumulation and max_length; explicit spec fields win. The
throughput and memory figures are what the guide *declared*, never measured by specc: the plan
labels them "declared, unmeasured" and prefers a calibration or prior runs whenever one exists.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    batch_size: int | None
    grad_accum: int | None
    max_length: int | None
    declared_tokens_per_s: float | None
    declared_mem_gb: float | None
    best_for: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("fast", 8, 4, 1024, 1200.0, 75.0, "large datasets, tight time windows"),
        Profile("balanced", 4, 8, 2048, 800.0, 60.0, "most runs: the quality/speed trade-off"),
        Profile("quality", 2, 16, 4096, 400.0, 70.0, "small datasets, maximum quality"),
        Profile("memory_efficient", 1, 32, 2048, 300.0, 45.0, "memory-bound: large models, small GPUs"),
        Profile("custom", None, None, None, None, None, "every field set explicitly in the spec"),
    )
}

# Used when neither the spec nor the profile sets a field (profile "custom").
FALLBACK = {"batch_size": 4, "grad_accum": 1, "max_length": 512}
