"""The NVML monitor (backends/torch_gpu.py) where there is no NVIDIA driver: it says why and never fails a run."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pynvml = pytest.importorskip("pynvml")

from backends.torch_gpu import GpuMonitor  # noqa: E402


def _driver() -> bool:
    try:
        pynvml.nvmlInit()
        return True
    except pynvml.NVMLError:
        return False


@pytest.mark.skipif(_driver(), reason="an NVIDIA driver is present: tests/backends/test_torch_cuda.py covers it")
def test_without_a_driver_the_monitor_reports_nothing_and_says_why():
    mon = GpuMonitor(torch, torch.device("cpu"))
    assert mon.describe().startswith("unavailable (NVMLError")
    assert mon.sample() == {}
