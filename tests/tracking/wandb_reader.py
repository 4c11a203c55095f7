"""Read an offline W&B run back from its transaction log (run-<id>.wandb), as `wandb sync` would.

The file is a 7-byte header (":W&B", magic 0xBEE1, version) and then LevelDB-log records in 32 KiB blocks
(crc32 uint32, length uint16, type uint8: full, first, middle, last), each a serialized wandb Record.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:                       # the rest of a block too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def offline_run(wandb_dir: Path, run_id: str) -> dict:
    """Everything the offline runs of `run_id` hold, in order: history by key, config, notes, summary, artifacts."""
    history: dict[str, list[tuple[int, float]]] = {}
    config, summary, notes, artifacts, files = {}, {}, [], [], 0
    for log in sorted(Path(wandb_dir).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        files += 1
        for r in records(log):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                for item in r.history.item:
                    key = item.key or ".".join(item.nested_key)
                    if not key.startswith("_"):
                        history.setdefault(key, []).append((r.history.step.num, float(json.loads(item.value_json))))
            elif kind == "run":
                notes.append(r.run.notes)
                for item in r.run.config.update:
                    config[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "config":
                for item in r.config.update:
                    config[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "summary":
                for item in r.summary.update:
                    summary[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "artifact":
                artifacts.append((r.artifact.name, r.artifact.type))
    return {"history": history, "config": config, "summary": summary, "notes": notes, "artifacts": artifacts,
            "files": files}
