"""Crash-safe checkpoint store, backend-neutral: safetensors + JSON, never pickle.

Layout (stable; tests and tools read it)::

    <ckpt_root>/step_0000250/
        state.safetensors     every array from Backend.state() (adapter, optimizer, rng)
        trainer_state.json    the engine's dict, plus "format_version"
        adapter/              optional, written by `write_extra` (the exported PEFT / mlx-lm adapter)
        manifest.json         written last: {"format_version": 1, "step": N,
                              "files": {relpath: {"sha256": ..., "size": ...}}}

Saving is `atomic.publish`: everything goes into `step_N.tmp-<pid>/`; every file and directory is
fsynced, the manifest is written and fsynced last (the commit marker), then the directory is renamed
to `step_N/` and the parent fsynced. Only then are old checkpoints pruned. Re-saving an existing step
moves the old one aside first; a crash in between is repaired by `find_latest_valid`, which moves it
back. A checkpoint without a manifest that verifies never counts, so a crash at any moment leaves the
previous checkpoint as the latest valid one.

Resume: `find_latest_valid` removes `*.tmp-*` / `*.del-*` leftovers, restores orphaned `*.old-*`
dirs, and returns the highest step whose manifest verifies (a bad one is skipped with a warning).

Dtypes are kept exactly (bytes in, bytes out). numpy has no bfloat16: a backend hands bf16 state over
either as a `uint16` view of the raw bits (bit-exact; the backend views it back) or upcast to float32
(also exact, since every bf16 value is a float32). bfloat16/ml_dtypes arrays are rejected here.

One writer per run directory at a time: the engine holds `atomic.RunLock` while it trains, which is
what makes it safe that `find_latest_valid` removes every `*.tmp-*` it finds. safetensors is imported
lazily, so importing this module needs only numpy. Filesystem writes go through the seams in
specc/engine/atomic.py, where tests inject faults.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from specc.engine import atomic
from specc.engine.atomic import CheckpointWriteError  # noqa: F401  (raised by write_checkpoint; callers catch it here)
from specc.errors import UserError
from specc.notices import warn

FORMAT_VERSION = 1
STATE_FILE = "state.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"

_STEP_RE = re.compile(r"^step_(\d+)$")
_SAVABLE_DTYPES = frozenset(
    ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
     "float16", "float32", "float64", "complex64"]
)


class CorruptCheckpoint(UserError):
    """A checkpoint directory that does not verify against its manifest."""


class UnsupportedCheckpointFormat(UserError):
    """A checkpoint written by a newer specc (format_version higher than this one reads)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _prepare_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if not isinstance(k, str) or not k:
            raise TypeError(f"checkpoint array names must be non-empty strings, got {k!r}")
        if not isinstance(v, np.ndarray):
            raise TypeError(f"checkpoint array {k!r} is {type(v).__name__}, expected numpy.ndarray")
        if v.dtype.name not in _SAVABLE_DTYPES:
            raise TypeError(
                f"checkpoint array {k!r} has dtype {v.dtype}, which safetensors/numpy cannot round-trip;"
                " hand bfloat16 over as a uint16 view of its bits (or as float32)"
            )
        if v.dtype.byteorder == ">" or (v.dtype.byteorder == "=" and sys.byteorder == "big"):
            v = v.astype(v.dtype.newbyteorder("<"))
        # safetensors reads raw memory, so strided views must be packed (ascontiguousarray would turn 0-d
        # arrays into 1-d ones).
        out[k] = v if v.flags.c_contiguous else v.copy(order="C")
    return out


def _parse_step(name: str) -> int | None:
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------------
# Public API.

def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """All `step_N` directories (valid or not), ascending by step."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        step = _parse_step(entry.name)
        if step is not None and entry.is_dir():
            found.append((step, entry))
    return sorted(found)


def prune_checkpoints(ckpt_root: Path, keep_last: int, protect: Iterable[int] = ()) -> list[int]:
    """Delete all but the `keep_last` highest steps and the `protect`ed ones; return deleted steps.

    Each victim is first renamed to `step_N.del-<pid>` (atomic), so an interrupted prune never leaves
    a half-deleted `step_N`. Failures are logged and skipped: pruning never stops training.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(ckpt_root)
    ckpts = list_checkpoints(root)
    keep = {s for s, _ in ckpts[-keep_last:]} | {int(s) for s in protect}
    victims: list[tuple[int, Path]] = []
    for step, path in ckpts:
        if step in keep:
            continue
        trash = root / f"{path.name}.del-{os.getpid()}"
        try:
            if trash.exists():
                atomic.remove(trash)
            atomic._rename(path, trash)
            victims.append((step, trash))
        except OSError as e:
            warn(f"could not prune checkpoint {path}: {e}")
    if victims:
        try:
            atomic.fsync_dir(root)
        except OSError as e:
            warn(f"could not sync {root} after pruning: {e}")
    for step, trash in victims:
        err = atomic.remove(trash)
        if err:
            warn(f"could not delete {trash} (pruned step {step}): {err}; it is removed on the next resume")
    return [s for s, _ in victims]


def write_checkpoint(
    ckpt_root: Path,
    step: int,
    arrays: dict[str, np.ndarray],
    trainer_state: dict,
    *,
    write_extra: Callable[[Path], None] | None = None,
    keep_last: int,
    protect: Iterable[int] = (),
) -> Path:
    """Atomically write checkpoint `step` under `ckpt_root`, then prune; return its directory.

    `write_extra(ckpt_dir)` is called with the in-progress checkpoint directory (state.safetensors
    and trainer_state.json already in it) and may add files, by convention under `adapter/`; it must
    not touch the existing files or write manifest.json. Everything it writes is fsynced and listed
    in the manifest. The just-written step and `protect` (e.g. the best step) are never pruned.
    Raises CheckpointWriteError on any filesystem error; the previous checkpoint is then intact.
    """
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    step = int(step)
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if "step" in trainer_state and trainer_state["step"] != step:
        raise ValueError(f"trainer_state['step'] is {trainer_state['step']!r} but saving step {step}")
    prepared = _prepare_arrays(arrays)
    state = {**trainer_state, "step": step, "format_version": FORMAT_VERSION}
    try:
        state_json = json.dumps(state, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as e:
        raise TypeError(f"trainer_state must be plain JSON (no NaN/inf, no objects): {e}") from None
    protect = [int(s) for s in protect]

    root = Path(ckpt_root)
    name = step_dir_name(step)
    previous = [p.name for s, p in list_checkpoints(root) if s != step]
    if (root / name).is_dir():
        kept = f"the existing {name} is intact"
    elif previous:
        kept = f"the previous checkpoint {previous[-1]} is intact"
    else:
        kept = "no earlier checkpoint exists"

    def fill(tmp: Path, doing: list[str]) -> None:
        doing[0] = f"writing {STATE_FILE}"
        atomic.save_arrays(prepared, tmp / STATE_FILE)
        doing[0] = f"writing {TRAINER_STATE_FILE}"
        atomic._write_bytes(tmp / TRAINER_STATE_FILE, state_json)
        if write_extra is not None:
            doing[0] = "write_extra (exporting extra files)"
            write_extra(tmp)

    def seal(tmp: Path, files: dict, doing: list[str]) -> None:
        doing[0] = f"writing {MANIFEST_FILE}"
        manifest = {"format_version": FORMAT_VERSION, "step": step, "files": files}
        atomic._write_bytes(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode() + b"\n")

    final = atomic.publish(root / name, fill, seal=seal, what=f"save checkpoint {name}", kept=kept)
    prune_checkpoints(root, keep_last, [*protect, step])
    return final


def verify_checkpoint(path: Path) -> None:
    """Raise CorruptCheckpoint (with the reason) unless every file the manifest lists is intact.

    Files present but not listed are ignored. Raises UnsupportedCheckpointFormat for a newer format.
    """
    path = Path(path)

    def bad(reason: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(reason, where=str(path))

    if not path.is_dir():
        raise bad("not a directory")
    mpath = path / MANIFEST_FILE
    try:
        manifest = json.loads(mpath.read_bytes())
    except FileNotFoundError:
        raise bad(f"{MANIFEST_FILE} is missing (the save did not finish)") from None
    except OSError as e:
        raise bad(f"{MANIFEST_FILE} cannot be read: {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"{MANIFEST_FILE} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise bad(f"{MANIFEST_FILE} is not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"{MANIFEST_FILE} has no valid format_version")
    if version > FORMAT_VERSION:
        raise UnsupportedCheckpointFormat(
            f"checkpoint format_version {version} is newer than this specc reads ({FORMAT_VERSION})",
            hint="upgrade specc to resume from it", where=str(path),
        )
    step = manifest.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise bad(f"{MANIFEST_FILE} has no integer step")
    dir_step = _parse_step(path.name)
    if dir_step is not None and dir_step != step:
        raise bad(f"{MANIFEST_FILE} says step {step} but the directory is {path.name}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad(f"{MANIFEST_FILE} has no 'files' object")
    for required in (STATE_FILE, TRAINER_STATE_FILE):
        if required not in files:
            raise bad(f"{MANIFEST_FILE} does not list {required}")
    for rel, entry in files.items():
        parts = rel.split("/")
        if not rel or rel.startswith("/") or ".." in parts or "\\" in rel or rel == MANIFEST_FILE:
            raise bad(f"{MANIFEST_FILE} lists an invalid path {rel!r}")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("size"), int)):
            raise bad(f"{MANIFEST_FILE} entry for {rel} lacks sha256/size")
        fpath = path.joinpath(*parts)
        try:
            actual_size = fpath.stat().st_size
        except FileNotFoundError:
            raise bad(f"{rel} is missing") from None
        except OSError as e:
            raise bad(f"{rel} cannot be read: {e}") from None
        if actual_size != entry["size"]:
            raise bad(f"{rel} has {actual_size} bytes, the manifest says {entry['size']}")
        try:
            sha, _ = atomic.hash_file(fpath)
        except OSError as e:
            raise bad(f"{rel} cannot be read: {e}") from None
        if sha != entry["sha256"]:
            raise bad(f"{rel} does not match its sha256 in the manifest (the file is corrupt)")


def find_latest_valid(ckpt_root: Path) -> tuple[Path | None, list[str]]:
    """Repair leftovers of interrupted saves, then return (highest verifying checkpoint, warnings).

    A checkpoint that fails verification is skipped (kept on disk for inspection) with a warning.
    Raises UnsupportedCheckpointFormat rather than silently resuming behind a newer-format one.
    """
    root = Path(ckpt_root)
    warnings = atomic.recover_leftovers(root, r"step_\d+")
    return _first_valid(list_checkpoints(root), warnings)


def newest_valid(ckpt_root: Path) -> tuple[Path | None, list[str]]:
    """Like find_latest_valid, but read-only: nothing is repaired or removed (to decide before acting).

    A `step_N.old-<pid>` set aside by an interrupted replace counts as step N (find_latest_valid would
    restore it); unfinished `*.tmp-*` saves never count."""
    root = Path(ckpt_root)
    candidates = list_checkpoints(root)
    if root.is_dir():
        rx = re.compile(atomic.LEFTOVER_RE.format(base=r"step_\d+"))
        taken = {s for s, _ in candidates}
        for entry in root.iterdir():
            m = rx.match(entry.name)
            if m and m.group("kind") == "old" and _parse_step(m.group("base")) not in taken:
                candidates.append((_parse_step(m.group("base")), entry))
    return _first_valid(sorted(candidates), [])


def _first_valid(candidates: list[tuple[int, Path]], warnings: list[str]) -> tuple[Path | None, list[str]]:
    """The highest-step candidate that verifies; each one skipped adds a warning."""
    for _, path in reversed(candidates):
        try:
            verify_checkpoint(path)
        except CorruptCheckpoint as e:
            warnings.append(f"skipping checkpoint {path.name}: {e.message}")
            continue
        return path, warnings
    return None, warnings


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Verify, then return (arrays, trainer_state) exactly as written (trainer_state without
    "format_version")."""
    from safetensors.numpy import load_file

    path = Path(path)
    verify_checkpoint(path)
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_bytes())
        arrays = load_file(str(path / STATE_FILE))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"cannot be loaded: {e}", where=str(path)) from None
    except Exception as e:  # SafetensorError: a bad header that still matched the manifest
        raise CorruptCheckpoint(f"{STATE_FILE} cannot be parsed: {e}", where=str(path)) from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"{TRAINER_STATE_FILE} is not a JSON object", where=str(path))
    version = state.pop("format_version", None)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UnsupportedCheckpointFormat(
            f"trainer_state format_version {version} is newer than this specc reads ({FORMAT_VERSION})",
            hint="upgrade specc to resume from it", where=str(path),
        )
    return dict(arrays), state


def recover_tree(dst: Path) -> list[str]:
    """Repair leftovers of an interrupted publication of `dst` (best/, adapter/); call on resume."""
    return atomic.recover(dst)


def write_tree_atomic(dst: Path, write: Callable[[Path], None]) -> Path:
    """Publish `dst` (best/, the final adapter/) atomically: see atomic.write_tree_atomic."""
    return atomic.write_tree_atomic(dst, write)
