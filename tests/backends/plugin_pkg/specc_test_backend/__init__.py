"""A third-party backend, as a plugin distribution would ship one (tests/backends/test_plugin_backend.py).

It is importable only through PYTHONPATH and registered only through a real ``specc.backends`` entry
point in a ``.dist-info`` directory the test writes, so nothing in specc knows its name in advance.
It trains by delegating to the torch backend: a distinct backend, registered under its own name.
"""
from __future__ import annotations

from backends.torch_backend import TorchBackend


class PluginBackend(TorchBackend):
    name = "plugin"

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "plugin": __name__}
