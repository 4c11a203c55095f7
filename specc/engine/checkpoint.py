"""Crash-safe checkpoint store, backend-neutral: safetensors + JSON, never pickle.

Layout (stable; tests and tools read it)::

    <ckpt_root>/step_0000250/
        state.safetensors     every array from Backend.state() (adapter, optimizer, rng)
        trainer_state.json    the engine's dict, plus "format_version"
        adapter/              optional, written by `write_extra` (the exported PEFT / mlx-lm adapter)
        manifest.json         written last: {"format_version": 1, "step": N,
                              "files": {relpath: {"sha256": ..., "size": ...}}}

Saving: everything goes into `step_N.tmp-<pid>/`; every file and directory is fsynced, the manifest is
written and fsynced last, then the directory is renamed to `step_N/` and the parent fsynced. Only then
are old checkpoints pruned. Re-saving an existing step moves the old one to `step_N.old-<pid>` first
and deletes it once the new one is in place; a crash in between is repaired by `find_latest_valid`,
which moves it back. A checkpoint without a manifest that verifies never counts, so a crash at any
moment leaves the previous checkpoint as the latest valid one.

Resume: `find_latest_valid` removes `*.tmp-*` / `*.del-*` leftovers, restores orphaned `*.old-*`
dirs, and returns the highest step whose manifest verifies (a bad one is skipped with a warning).

Dtypes are kept exactly (bytes in, bytes out). numpy has no bfloat16: a backend hands bf16 state over
either as a `uint16` view of the raw bits (bit-exact; the backend views it back) or upcast to float32
(also exact, since every bf16 value is a float32). bfloat16/ml_dtypes arrays are rejected here.

One writer per checkpoint directory at a time (the engine holds the run lock): `find_latest_valid`
removes every `*.tmp-*` it finds. The SIGKILL test proves crash-consistency at the process level; the
fsyncs are what extend it to power loss (F_FULLFSYNC on macOS). safetensors is imported lazily, so
importing this module needs only numpy.

Every filesystem write goes through the small module-level seams below (`_write_bytes`,
`_save_safetensors`, `_fsync`, `_rename`, `_mkdir`) so tests can inject faults.
"""
from __future__ import annotations

import errno as _errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from specc.errors import UserError

FORMAT_VERSION = 1
STATE_FILE = "state.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"

_STEP_RE = re.compile(r"^step_(\d+)$")
# Leftovers of interrupted work: tmp = unfinished save, old = replaced copy set aside, del = being pruned.
_LEFTOVER_RE = r"^(?P<base>{base})\.(?P<kind>tmp|old|del)-(?P<pid>\d+)$"
_SAVABLE_DTYPES = frozenset(
    ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
     "float16", "float32", "float64", "complex64"]
)
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


class CorruptCheckpoint(UserError):
    """A checkpoint directory that does not verify against its manifest."""


class UnsupportedCheckpointFormat(UserError):
    """A checkpoint written by a newer specc (format_version higher than this one reads)."""


class CheckpointWriteError(UserError):
    """Saving failed (ENOSPC, EIO, permissions, ...). The previous checkpoint is left intact."""

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None,
                 errno: int | None = None):
        super().__init__(message, hint=hint, where=where)
        self.errno = errno


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# --------------------------------------------------------------------------------------------------
# Filesystem seams (monkeypatched by tests to inject faults).

def _mkdir(path: Path) -> None:
    os.mkdir(path)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        _fsync(f.fileno())


def _save_safetensors(arrays: dict[str, np.ndarray], path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    try:
        save_file(arrays, str(path))
    except SafetensorError as e:  # I/O failures arrive as "... (os error 28)"; give them an errno back
        m = re.search(r"os error (\d+)", str(e))
        if m:
            code = int(m.group(1))
            raise OSError(code, os.strerror(code), str(path)) from e
        raise


def _fsync(fd: int) -> None:
    if sys.platform == "darwin":  # plain fsync does not flush the drive cache on macOS
        import fcntl
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:
            pass
    os.fsync(fd)


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


# --------------------------------------------------------------------------------------------------
# Small helpers.

def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync(fd)
    except OSError as e:
        # Some filesystems refuse fsync on a directory; as PostgreSQL does, accept that.
        if e.errno not in (_errno.EINVAL, _errno.EBADF, getattr(_errno, "ENOTSUP", -1),
                           getattr(_errno, "EOPNOTSUPP", -1)):
            raise
    finally:
        os.close(fd)


def _hash_file(path: Path, *, fsync: bool = False) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:  # fsync through a read-only fd is fine on Linux and macOS
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
        if fsync:
            _fsync(f.fileno())
    return h.hexdigest(), size


def _rmtree(path: Path) -> str | None:
    """Remove a file or tree; return an error text instead of raising."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return None
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{e.strerror or e} ({_errno_name(e)})"


def _errno_name(e: OSError) -> str:
    return _errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__


def _hint_for(e: OSError, root: Path) -> str:
    if e.errno in (_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG):
        return f"free disk space (or raise the quota) under {root}, then resume the run"
    if e.errno in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        return f"make {root} writable by this user, then resume the run"
    if e.errno == _errno.EIO:
        return "the storage reported an I/O error: check the disk/filesystem, then resume the run"
    return "fix the storage problem, then resume the run"


def _rel_posix(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _sync_tree(root: Path, doing: list[str]) -> dict[str, dict[str, object]]:
    """fsync every file and directory under `root` (deepest first); return the manifest's files.

    `doing[0]` always says what is being done, for the error message if it fails."""
    files: dict[str, dict[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        d = Path(dirpath)
        for name in sorted(filenames):
            p = d / name
            doing[0] = f"syncing {_rel_posix(p, root)}"
            sha, size = _hash_file(p, fsync=True)
            files[_rel_posix(p, root)] = {"sha256": sha, "size": size}
        doing[0] = f"syncing directory {_rel_posix(d, root) if d != root else '.'}"
        _fsync_dir(d)
    return dict(sorted(files.items()))


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


def _recover_leftovers(parent: Path, base_pattern: str) -> list[str]:
    """Clean up after interrupted saves in `parent`: drop tmp/del dirs, restore or drop old ones."""
    warnings: list[str] = []
    if not parent.is_dir():
        return warnings
    rx = re.compile(_LEFTOVER_RE.format(base=base_pattern))
    for entry in sorted(parent.iterdir()):
        m = rx.match(entry.name)
        if not m:
            continue
        base = parent / m.group("base")
        kind = m.group("kind")
        if kind == "old" and not base.exists():
            try:
                _rename(entry, base)
                _fsync_dir(parent)
                warnings.append(f"restored {base.name} from {entry.name} (a replace was interrupted)")
                continue
            except OSError as e:
                warnings.append(f"could not restore {base.name} from {entry.name}: {e}")
                continue
        err = _rmtree(entry)
        what = {"tmp": "an unfinished save", "old": "a replaced copy", "del": "an interrupted prune"}[kind]
        if err:
            warnings.append(f"could not remove leftover {entry.name} ({what}): {err}")
        elif kind == "tmp":
            warnings.append(f"removed {entry.name}, left by an interrupted save")
    return warnings


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
                _rmtree(trash)
            _rename(path, trash)
            victims.append((step, trash))
        except OSError as e:
            log.warning("could not prune checkpoint %s: %s", path, e)
    if victims:
        try:
            _fsync_dir(root)
        except OSError as e:
            log.warning("could not sync %s after pruning: %s", root, e)
    for step, trash in victims:
        err = _rmtree(trash)
        if err:
            log.warning("could not delete %s (pruned step %d): %s; it is removed on the next resume",
                        trash, step, err)
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
    final = root / name
    tmp = root / f"{name}.tmp-{os.getpid()}"
    aside = root / f"{name}.old-{os.getpid()}"
    previous = [p.name for s, p in list_checkpoints(root) if s != step]
    if final.is_dir():
        intact = f"the existing {name} is intact"
    elif previous:
        intact = f"the previous checkpoint {previous[-1]} is intact"
    else:
        intact = "no earlier checkpoint exists"
    moved_aside = published = False
    doing = [""]  # what is being done right now, for the error message
    try:
        doing[0] = f"creating {root}"
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            _fsync_dir(root.parent)
        if tmp.exists():  # stale, from an earlier process that had our pid
            _rmtree(tmp)
        doing[0] = f"creating {tmp.name}"
        _mkdir(tmp)
        doing[0] = f"writing {STATE_FILE}"
        _save_safetensors(prepared, tmp / STATE_FILE)
        doing[0] = f"writing {TRAINER_STATE_FILE}"
        _write_bytes(tmp / TRAINER_STATE_FILE, state_json)
        if write_extra is not None:
            doing[0] = "write_extra (exporting extra files)"
            write_extra(tmp)
        files = _sync_tree(tmp, doing)
        manifest = {"format_version": FORMAT_VERSION, "step": step, "files": files}
        doing[0] = f"writing {MANIFEST_FILE}"
        _write_bytes(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode() + b"\n")
        doing[0] = f"syncing directory {tmp.name}"
        _fsync_dir(tmp)
        if final.exists():
            if aside.exists():
                _rmtree(aside)
            doing[0] = f"renaming {name} to {aside.name}"
            _rename(final, aside)
            moved_aside = True
        doing[0] = f"renaming {tmp.name} to {name}"
        _rename(tmp, final)
        published = True
        doing[0] = f"syncing directory {root}"
        _fsync_dir(root)
    except OSError as e:
        if not published:
            _rmtree(tmp)
            if moved_aside:
                try:
                    _rename(aside, final)
                except OSError:
                    intact = f"the existing {name} was kept as {aside.name}; resuming restores it"
            note = intact
        else:
            note = f"the new {name} is in place but may not survive a power loss"
            if not moved_aside:
                note += f"; {intact}"
        raise CheckpointWriteError(
            f"could not save checkpoint {name}: {doing[0]} failed with {_errno_name(e)}"
            f" ({e.strerror or e}); {note}",
            hint=_hint_for(e, root), where=str(root), errno=e.errno,
        ) from e
    except BaseException:
        if not published:
            _rmtree(tmp)
            if moved_aside and not final.exists():
                try:
                    _rename(aside, final)
                except OSError:
                    pass
        raise
    if moved_aside:
        _rmtree(aside)  # a leftover is dropped by the next find_latest_valid
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
            sha, _ = _hash_file(fpath)
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
    warnings = _recover_leftovers(root, r"step_\d+")
    for step, path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CorruptCheckpoint as e:
            warnings.append(f"skipping checkpoint {path.name}: {e.message}")
            continue
        return path, warnings
    return None, warnings


def newest_valid(ckpt_root: Path) -> tuple[Path | None, list[str]]:
    """Like find_latest_valid, but read-only: nothing is repaired or removed (to decide before acting).

    A `step_N.old-<pid>` set aside by an interrupted replace counts as step N (find_latest_valid would
    restore it); unfinished `*.tmp-*` saves never count."""
    root = Path(ckpt_root)
    candidates = list_checkpoints(root)
    if root.is_dir():
        rx = re.compile(_LEFTOVER_RE.format(base=r"step_\d+"))
        taken = {s for s, _ in candidates}
        for entry in root.iterdir():
            m = rx.match(entry.name)
            if m and m.group("kind") == "old" and _parse_step(m.group("base")) not in taken:
                candidates.append((_parse_step(m.group("base")), entry))
    warnings: list[str] = []
    for step, path in sorted(candidates, reverse=True):
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
    """Repair leftovers of an interrupted `write_tree_atomic(dst, ...)` (call on resume)."""
    dst = Path(dst)
    return _recover_leftovers(dst.parent, re.escape(dst.name))


def write_tree_atomic(dst: Path, write: Callable[[Path], None]) -> Path:
    """Publish a directory atomically: `write(tmp)` fills `dst.tmp-<pid>/`, which is fsynced and then
    swapped in for `dst`, so `dst` is never half-written (used for `best/` and the final `adapter/`).

    Raises CheckpointWriteError on filesystem errors; an existing `dst` is then left as it was.
    """
    dst = Path(dst)
    parent = dst.parent
    tmp = parent / f"{dst.name}.tmp-{os.getpid()}"
    aside = parent / f"{dst.name}.old-{os.getpid()}"
    moved_aside = published = False
    doing = [""]
    try:
        doing[0] = f"creating {parent}"
        parent.mkdir(parents=True, exist_ok=True)
        for w in recover_tree(dst):
            log.warning("%s", w)
        doing[0] = f"creating {tmp.name}"
        _mkdir(tmp)
        doing[0] = f"writing {tmp.name}"
        write(tmp)
        _sync_tree(tmp, doing)
        if dst.exists():
            doing[0] = f"renaming {dst.name} to {aside.name}"
            _rename(dst, aside)
            moved_aside = True
        doing[0] = f"renaming {tmp.name} to {dst.name}"
        _rename(tmp, dst)
        published = True
        doing[0] = f"syncing directory {parent}"
        _fsync_dir(parent)
    except BaseException as e:
        if not published:
            _rmtree(tmp)
            if moved_aside:
                try:
                    _rename(aside, dst)
                except OSError:
                    pass
        if not isinstance(e, OSError):
            raise
        if published:
            note = f"{dst.name} is in place but may not survive a power loss"
        elif dst.exists():
            note = f"the existing {dst.name} is unchanged"
        else:
            note = f"{dst.name} was not written"
        raise CheckpointWriteError(
            f"could not publish {dst.name}: {doing[0]} failed with {_errno_name(e)} ({e.strerror or e}); {note}",
            hint=_hint_for(e, parent), where=str(dst), errno=e.errno,
        ) from e
    if moved_aside:
        _rmtree(aside)
    return dst


def copy_tree_atomic(src: Path, dst: Path) -> Path:
    """Atomically replace `dst` with a copy of directory `src` (see write_tree_atomic)."""
    src = Path(src)

    def _copy(tmp: Path) -> None:
        shutil.copytree(src, tmp, dirs_exist_ok=True)

    return write_tree_atomic(dst, _copy)
