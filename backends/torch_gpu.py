"""GPU health for the run log: utilization and device memory from NVML (nvidia-ml-py), on CUDA only.

`GpuMonitor.sample()` gives the figures the engine adds to each step's metrics.jsonl line:

* ``gpu_util``: the mean of NVML's GPU-utilization samples since the previous call (the share of time a
  kernel was running, over the step just done), else the instantaneous figure;
* ``gpu_mem_mb``: device memory in use as NVML counts it (every process, the CUDA context included: what
  runs out), and ``cuda_reserved_mb``: what torch's caching allocator holds.

Without nvidia-ml-py, or without a driver, it gives nothing and describe() says why; it never fails a run.
"""
from __future__ import annotations

import os


class GpuMonitor:
    def __init__(self, torch, device) -> None:
        self._torch, self.device = torch, device
        self._nvml = self._handle = None
        self._last_ts = 0
        self.why = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = _handle(pynvml, torch, device)
            self._nvml = pynvml
        except Exception as exc:   # no nvidia-ml-py, no driver, a device NVML does not list
            self.why = f"{type(exc).__name__}: {exc}".strip()

    def describe(self) -> str:
        return "nvidia-ml-py: gpu_util and gpu_mem_mb in metrics.jsonl" if self._nvml else f"unavailable ({self.why})"

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        torch = self._torch
        if self.device.type == "cuda":
            out["cuda_reserved_mb"] = round(torch.cuda.memory_reserved(self.device) / 1024 ** 2, 1)
        if self._nvml is None:
            return out
        nv = self._nvml
        try:
            out["gpu_mem_mb"] = round(nv.nvmlDeviceGetMemoryInfo(self._handle).used / 1024 ** 2, 1)
            out["gpu_util"] = self._utilization()
        except Exception:   # a transient NVML error is not the run's problem
            pass
        return out

    def _utilization(self) -> float:
        nv = self._nvml
        try:
            _, samples = nv.nvmlDeviceGetSamples(self._handle, nv.NVML_GPU_UTILIZATION_SAMPLES, self._last_ts)
        except Exception:
            samples = []
        fresh = [s for s in samples if s.timeStamp > self._last_ts]
        if fresh:
            self._last_ts = max(s.timeStamp for s in fresh)
            return round(sum(float(s.sampleValue.uiVal) for s in fresh) / len(fresh), 1)
        return float(nv.nvmlDeviceGetUtilizationRates(self._handle).gpu)


def _handle(pynvml, torch, device):
    """The NVML handle of torch's device: by UUID (CUDA_VISIBLE_DEVICES renumbers devices), else by index."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
        except Exception:
            pass
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and index < len(visible) and visible[index].isdigit():
        index = int(visible[index])
    return pynvml.nvmlDeviceGetHandleByIndex(index)
