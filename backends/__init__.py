"""Training backends behind one Protocol (backends/protocol.py), found through a lazy registry.

Built-ins are listed here by import path, so nothing heavy is imported until a backend is asked
for. Third parties add one through the ``specc.backends`` entry-point group; a broken plugin is
reported and skipped, never fatal for the others.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from importlib.metadata import entry_points

from backends.protocol import Backend, BackendInfo

log = logging.getLogger(__name__)

BUILTIN: dict[str, BackendInfo] = {
    "torch": BackendInfo("torch", "backends.torch_backend:TorchBackend", "torch",
                         ("torch", "transformers", "peft", "bitsandbytes", "safetensors")),
    "mlx": BackendInfo("mlx", "backends.mlx_backend:MLXBackend", "mlx", ("mlx", "mlx_lm", "safetensors")),
}


def registry() -> dict[str, BackendInfo]:
    """Built-ins plus entry-point plugins (a plugin may not shadow a built-in)."""
    found = dict(BUILTIN)
    try:
        eps = entry_points(group="specc.backends")
    except Exception as exc:  # a broken environment must not break the built-ins
        log.warning("could not read specc.backends entry points: %s", exc)
        eps = []
    for ep in eps:
        if ep.name in found:
            log.warning("backend plugin %r ignored: the name is taken by a built-in", ep.name)
            continue
        found[ep.name] = BackendInfo(ep.name, ep.value, extra=ep.name)
    return found


def names() -> list[str]:
    """Every backend a spec or --backend may name: the built-ins and the registered plugins (nothing imported)."""
    return sorted(registry())


def unknown_backend(name: str) -> str | None:
    """None for "auto" or a registered backend, else a message with a did-you-mean."""
    import difflib

    known = names()
    if name == "auto" or name in known:
        return None
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return (f"unknown backend {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            + f" (registered: auto, {', '.join(known)}; plugins register in the specc.backends entry-point group)")


def missing_modules(info: BackendInfo) -> list[str]:
    return [m for m in info.modules if importlib.util.find_spec(m) is None]


def available() -> list[str]:
    """Names of backends whose packages are importable here (nothing is imported)."""
    return [name for name, info in registry().items() if not missing_modules(info)]


def load_backend(name: str) -> Backend:
    """Instantiate a backend by name, with a clear error naming the extra to install."""
    from specc.errors import UserError

    reg = registry()
    if name not in reg:
        raise UserError(unknown_backend(name) or f"unknown backend {name!r}")
    info = reg[name]
    missing = missing_modules(info)
    if missing:
        raise UserError(
            f"backend {name!r} needs packages that are not installed: {', '.join(missing)}",
            hint=f"pip install 'specc[{info.extra}]'",
        )
    module_name, _, cls_name = info.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except Exception as exc:
        raise UserError(f"backend {name!r} failed to import ({info.target}): {exc}") from exc
    return cls()
