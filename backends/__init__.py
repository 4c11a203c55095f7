"""Training backends behind one Protocol (backends/protocol.py), found through a lazy registry.

Built-ins are listed here by import path, so nothing heavy is imported until a backend is asked
for. Third parties add one through the ``specc.backends`` entry-point group; a broken plugin is
reported and skipped, never fatal for the others.
"""
from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points

from backends.protocol import Backend, BackendInfo

BUILTIN: dict[str, BackendInfo] = {
    "torch": BackendInfo("torch", "backends.torch_backend:TorchBackend", "torch",
                         ("torch", "transformers", "peft", "bitsandbytes", "safetensors")),
    "mlx": BackendInfo("mlx", "backends.mlx_backend:MLXBackend", "mlx", ("mlx", "mlx_lm", "safetensors")),
}
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A broken plugin is said once per process (specc.notices: "warning: ..." on stderr), then skipped."""
    if message not in _warned:
        _warned.add(message)
        from specc.notices import warn

        warn(message)


def _plugin(ep) -> BackendInfo | None:
    """What the registry records for an entry point ("module:Class"), without importing anything."""
    module, _, attr = (part.strip() for part in ep.value.partition(":"))
    if not module or not attr:
        _warn_once(f"backend plugin {ep.name!r} skipped: its entry point {ep.value!r} is not 'module:Class'")
        return None
    dist = getattr(getattr(ep, "dist", None), "name", None)
    return BackendInfo(ep.name, f"{module}:{attr}", extra=ep.name, modules=(module.split(".")[0],), dist=dist)


def registry() -> dict[str, BackendInfo]:
    """Built-ins plus entry-point plugins (a plugin may not shadow a built-in)."""
    found = dict(BUILTIN)
    try:
        eps = entry_points(group="specc.backends")
    except Exception as exc:  # a broken environment must not break the built-ins
        _warn_once(f"could not read the specc.backends entry points: {exc}")
        eps = []
    for ep in eps:
        if ep.name in found:
            _warn_once(f"backend plugin {ep.name!r} ignored: the name is taken by a built-in")
            continue
        info = _plugin(ep)
        if info is not None:
            found[ep.name] = info
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


def _is_plugin(info: BackendInfo) -> bool:
    return BUILTIN.get(info.name) is not info


def _missing_plugin_module(info: BackendInfo, missing: list[str]) -> str:
    source = f"the distribution {info.dist!r}" if info.dist else "an installed distribution"
    return (f"its entry point `{info.name} = {info.target}` (specc.backends, from {source}) names module "
            f"{', '.join(missing)}, which is not importable")


def available() -> list[str]:
    """Names of backends whose packages are importable here (nothing is imported); broken plugins are skipped."""
    out = []
    for name, info in registry().items():
        missing = missing_modules(info)
        if not missing:
            out.append(name)
        elif _is_plugin(info):
            _warn_once(f"backend plugin {name!r} skipped: {_missing_plugin_module(info, missing)}")
    return out


def load_backend(name: str) -> Backend:
    """Instantiate a backend by name, with a clear error naming the extra (or plugin) to install."""
    from specc.errors import UserError

    reg = registry()
    if name not in reg:
        raise UserError(unknown_backend(name) or f"unknown backend {name!r}")
    info = reg[name]
    missing = missing_modules(info)
    if missing and _is_plugin(info):
        raise UserError(f"backend plugin {name!r} cannot be loaded: {_missing_plugin_module(info, missing)}",
                        hint=f"reinstall {info.dist or 'the plugin'}, or uninstall it and choose another backend")
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
    backend = cls()
    if not isinstance(backend, Backend):
        raise UserError(f"backend {name!r} ({info.target}) does not implement the Backend protocol",
                        hint="see backends/protocol.py: setup, forward_backward, optimizer_step, state, ...")
    return backend
