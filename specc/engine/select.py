"""Choose a backend for `backend: auto`, and say why."""
from __future__ import annotations

import importlib.util
import platform

from backends import available


def choose_backend(preference: str) -> tuple[str, str]:
    """(backend name, the reason) for a spec's `backend` field or a --backend override."""
    if preference != "auto":
        return preference, f"requested ({preference})"
    have = available()
    if "torch" in have and _cuda_available():
        return "torch", "auto: a CUDA GPU is present"
    if "mlx" in have and platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mlx", "auto: Apple silicon"
    if "torch" in have:
        return "torch", "auto: no CUDA GPU and not Apple silicon, so torch on the CPU"
    if "mlx" in have:
        return "mlx", "auto: torch is not installed; mlx is"
    return "torch", "auto: no backend installed (install 'specc[torch]' or 'specc[mlx]')"


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()
