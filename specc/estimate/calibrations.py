"""Calibration files: measured speed, memory and fixed overheads per run shape, committed with the specs.

`calibrations/<device key>.json` (the directory is `$SPECC_CALIBRATIONS`, else `calibrations/` in the
working directory, the repository root, like generated/ and runs/):

    {
      "format_version": 1,
      "device_key": "local-cpu",
      "entries": {                          # one per run shape (specc.estimate.shape.RunShape.key)
        "<shape key>": {
          "shape": {...},                   # the RunShape fields
          "measured": {"at", "host", "backend", "device", "specc_version", "steps", "warmup_steps"},
          "throughput": {"tokens_per_s", "step_s", "step_s_stdev", "tokens_per_step"},
          "overheads": {"import_s", "model_load_s", "data_s", "data_tokens", "warmup_extra_s",
                        "eval_prepare_s", "eval_batch_s", "checkpoint_s", "export_s", "step_overhead_s",
                        "finish_s"},
          "memory": {"peak_mb", "fixed_mb", "source", "batch_size",
                     # CUDA only: allocator reserved and NVML peaks, the CUDA context, the memory model's figure
                     "reserved_mb", "device_mb", "context_mb", "formula_mb", "formula_error"},
          "data": {"train", "valid", "format", "stride", "seed", "batches_per_epoch",
                   "tokens_per_epoch", "valid_batches"}   # facts that hold only for this data
        }
      },
      "accuracy": {                         # `specc calibrate --from-runs`: estimated / actual wall time
        "<shape key>": [{"run", "source", "estimated_s", "actual_s", "time_accuracy", "at"}]
      }
    }

Keys are sorted and floats rounded, so the file diffs well in review.
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from specc.fmt import rounded_floats

FORMAT_VERSION = 1
MAX_ACCURACY_RECORDS = 20     # per shape: the newest are kept
CORRECTION_WINDOW = 5         # the median of this many newest records corrects the next estimate


def calibrations_dir(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("SPECC_CALIBRATIONS")
    return Path(env) if env else Path("calibrations")


def calibration_path(key: str, directory: str | Path | None = None) -> Path:
    return calibrations_dir(directory) / f"{key}.json"


@dataclass
class CalibrationFile:
    path: Path
    device_key: str
    entries: dict[str, dict] = field(default_factory=dict)
    accuracy: dict[str, list[dict]] = field(default_factory=dict)

    def entry(self, shape_key: str) -> dict | None:
        return self.entries.get(shape_key)

    def correction(self, shape_key: str, source: str) -> tuple[float | None, int]:
        """(median time_accuracy of the newest records for this shape and source kind, how many)."""
        records = [r for r in self.accuracy.get(shape_key, []) if r.get("source") == source
                   and isinstance(r.get("time_accuracy"), (int, float)) and r["time_accuracy"] > 0]
        records = records[-CORRECTION_WINDOW:]
        if not records:
            return None, 0
        return statistics.median(r["time_accuracy"] for r in records), len(records)

    def to_json(self) -> str:
        data = {"format_version": FORMAT_VERSION, "device_key": self.device_key,
                "entries": self.entries, "accuracy": self.accuracy}
        return json.dumps(rounded_floats(data), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, self.path)
        _load_cached.cache_clear()

    def add_accuracy(self, shape_key: str, record: dict) -> None:
        records = [r for r in self.accuracy.get(shape_key, []) if r.get("run") != record.get("run")]
        records.append(record)
        self.accuracy[shape_key] = records[-MAX_ACCURACY_RECORDS:]


def load_calibration(key: str, directory: str | Path | None = None) -> CalibrationFile | None:
    """The calibration file of a device key, or None when there is none (or it is unreadable)."""
    path = calibration_path(key, directory)
    try:
        stat = path.stat()
    except OSError:
        return None
    data = _load_cached(str(path), stat.st_mtime_ns, stat.st_size)
    if data is None:
        return None
    return CalibrationFile(path, data.get("device_key", key), json.loads(json.dumps(data.get("entries", {}))),
                           json.loads(json.dumps(data.get("accuracy", {}))))


def open_calibration(key: str, directory: str | Path | None = None) -> CalibrationFile:
    """For writing: the existing file or a new, empty one."""
    return load_calibration(key, directory) or CalibrationFile(calibration_path(key, directory), key)


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int, size: int) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        return None
    return data
