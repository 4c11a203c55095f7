"""What an offline W&B run already holds, read from its transaction logs (<run>/wandb/offline-run-*-<id>/run-<id>.wandb).

W&B writes the log from its own service process, which loses what it had not written when the trainer is
killed; a resumed run asks the log, not its own notes, which steps are there. The format: a 7-byte header
(":W&B", magic, version), then LevelDB-log chunks in 32 KiB blocks (crc32, length, type: full, first,
middle, last), each record a serialized wandb Record (wandb's own protobuf definitions).
"""
from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32 * 1024


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        return
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):    # block padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):       # a full record, or the last chunk of one
            record = pb.Record()
            try:
                record.ParseFromString(buf)
            except Exception:    # a record torn by a kill: what follows is unreadable too
                return
            yield record
            buf = b""


def held_through(wandb_dir: Path, run_id: str) -> int:
    """The last step of the run's history in its offline logs (-1: none)."""
    last = -1
    for log in Path(wandb_dir).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"):
        for record in _records(log):
            if record.WhichOneof("record_type") == "history":
                last = max(last, record.history.step.num)
    return last
