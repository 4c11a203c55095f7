"""Publishing a directory atomically, and the lock that keeps one trainer per run directory.

`publish(dst, fill)` is the one primitive behind checkpoints, `best/` and the final `adapter/`:
`fill` writes into `dst.tmp-<pid>/`; every file and directory is fsynced (F_FULLFSYNC on macOS);
an optional `seal` writes a commit marker (a checkpoint's manifest) last; then the directory takes
`dst`'s place: an existing `dst` is renamed to `dst.old-<pid>`, the new one renamed in, the parent
fsynced, the old copy removed. A crash at any point leaves either the old or the new `dst`, plus
leftovers that `recover(dst)` repairs: an orphaned `.old-` copy is put back, `.tmp-` and `.del-`
ones are removed. The SIGKILL tests prove crash-consistency at the process level; the fsyncs extend
it to power loss.

Every filesystem write goes through the module-level seams (`_mkdir`, `_write_bytes`,
`save_arrays`, `_fsync`, `_rename`) so tests can inject faults.
"""
from __future__ import annotations

import errno as _errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from specc.errors import UserError
from specc.notices import warn

_CHUNK = 1 << 20
# Leftovers of interrupted work: tmp = unfinished write, old = replaced copy set aside, del = being pruned.
LEFTOVER_RE = r"^(?P<base>{base})\.(?P<kind>tmp|old|del)-(?P<pid>\d+)$"


class CheckpointWriteError(UserError):
    """Saving failed (ENOSPC, EIO, permissions, ...). What was there before is left intact."""

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None,
                 errno: int | None = None):
        super().__init__(message, hint=hint, where=where)
        self.errno = errno


# ---------------------------------------------------------------------------------- filesystem seams

def _mkdir(path: Path) -> None:
    os.mkdir(path)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        _fsync(f.fileno())


def save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """safetensors' save_file, made safe: it writes an array's memory buffer as is, so a transposed view
    (mlx's canonical layout is `v.T`) came back scrambled with no error; every array is made C-contiguous."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    try:
        save_file({k: v if v.flags.c_contiguous else np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    except SafetensorError as e:  # I/O failures arrive as "... (os error 28)"; give them an errno back
        m = re.search(r"os error (\d+)", str(e))
        if m:
            code = int(m.group(1))
            raise OSError(code, os.strerror(code), str(path)) from e
        raise


def _fsync(fd: int) -> None:
    if sys.platform == "darwin":  # plain fsync does not flush the drive cache on macOS
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:
            pass
    os.fsync(fd)


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


# --------------------------------------------------------------------------------------- helpers

def fsync_dir(path: Path) -> None:
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


def hash_file(path: Path, *, fsync: bool = False) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:  # fsync through a read-only fd is fine on Linux and macOS
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
        if fsync:
            _fsync(f.fileno())
    return h.hexdigest(), size


def remove(path: Path) -> str | None:
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
        return f"{e.strerror or e} ({errno_name(e)})"


def errno_name(e: OSError) -> str:
    return _errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__


def hint_for(e: OSError, root: Path) -> str:
    if e.errno in (_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG):
        return f"free disk space (or raise the quota) under {root}, then resume the run"
    if e.errno in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        return f"make {root} writable by this user, then resume the run"
    if e.errno == _errno.EIO:
        return "the storage reported an I/O error: check the disk/filesystem, then resume the run"
    return "fix the storage problem, then resume the run"


def sync_tree(root: Path, doing: list[str]) -> dict[str, dict[str, object]]:
    """fsync every file and directory under `root` (deepest first); return {relpath: {sha256, size}}.

    `doing[0]` always says what is being done, for the error message if it fails."""
    files: dict[str, dict[str, object]] = {}
    for dirpath, _, filenames in os.walk(root, topdown=False):
        d = Path(dirpath)
        for name in sorted(filenames):
            p = d / name
            doing[0] = f"syncing {p.relative_to(root).as_posix()}"
            sha, size = hash_file(p, fsync=True)
            files[p.relative_to(root).as_posix()] = {"sha256": sha, "size": size}
        doing[0] = f"syncing directory {d.relative_to(root).as_posix() if d != root else '.'}"
        fsync_dir(d)
    return dict(sorted(files.items()))


def recover_leftovers(parent: Path, base_pattern: str) -> list[str]:
    """Clean up after interrupted writes in `parent`: drop tmp/del dirs, restore or drop old ones."""
    warnings: list[str] = []
    if not parent.is_dir():
        return warnings
    rx = re.compile(LEFTOVER_RE.format(base=base_pattern))
    for entry in sorted(parent.iterdir()):
        m = rx.match(entry.name)
        if not m:
            continue
        base, kind = parent / m.group("base"), m.group("kind")
        if kind == "old" and not base.exists():
            try:
                _rename(entry, base)
                fsync_dir(parent)
                warnings.append(f"restored {base.name} from {entry.name} (a replace was interrupted)")
            except OSError as e:
                warnings.append(f"could not restore {base.name} from {entry.name}: {e}")
            continue
        err = remove(entry)
        what = {"tmp": "an unfinished save", "old": "a replaced copy", "del": "an interrupted prune"}[kind]
        if err:
            warnings.append(f"could not remove leftover {entry.name} ({what}): {err}")
        elif kind == "tmp":
            warnings.append(f"removed {entry.name}, left by an interrupted save")
    return warnings


def recover(dst: Path) -> list[str]:
    """Repair leftovers of an interrupted `publish(dst, ...)` (call before reading or replacing `dst`)."""
    dst = Path(dst)
    return recover_leftovers(dst.parent, re.escape(dst.name))


# -------------------------------------------------------------------------------------- publishing

def publish(dst: Path, fill: Callable[[Path, list[str]], None], *, seal: Callable[[Path, dict, list[str]], None] | None = None,
            what: str, kept: str) -> Path:
    """Atomically make `dst` the directory that `fill(tmp, doing)` writes (see the module docstring).

    `seal(tmp, files, doing)` runs after everything is synced, with the {relpath: {sha256, size}} of every file,
    and writes the commit marker. `what` names the operation for errors ("save checkpoint step_0000250");
    `kept` says what is intact if it fails before the swap ("the previous checkpoint step_0000200 is intact").
    Raises CheckpointWriteError on filesystem errors; any other exception from `fill` propagates, and in
    both cases the temporary directory is removed and `dst` is what it was.
    """
    dst = Path(dst)
    parent = dst.parent
    tmp = parent / f"{dst.name}.tmp-{os.getpid()}"
    aside = parent / f"{dst.name}.old-{os.getpid()}"
    moved_aside = published = False
    doing = [""]  # what is being done right now, for the error message
    try:
        doing[0] = f"creating {parent}"
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(parent.parent)
        if tmp.exists():  # stale, from an earlier process that had our pid
            remove(tmp)
        doing[0] = f"creating {tmp.name}"
        _mkdir(tmp)
        fill(tmp, doing)
        files = sync_tree(tmp, doing)
        if seal is not None:
            seal(tmp, files, doing)
            doing[0] = f"syncing directory {tmp.name}"
            fsync_dir(tmp)
        if dst.exists():
            if aside.exists():
                remove(aside)
            doing[0] = f"renaming {dst.name} to {aside.name}"
            _rename(dst, aside)
            moved_aside = True
        doing[0] = f"renaming {tmp.name} to {dst.name}"
        _rename(tmp, dst)
        published = True
        doing[0] = f"syncing directory {parent}"
        fsync_dir(parent)
    except OSError as e:
        if not published:
            remove(tmp)
            if moved_aside:
                try:
                    _rename(aside, dst)
                except OSError:
                    kept = f"the existing {dst.name} was kept as {aside.name}; resuming restores it"
            note = kept
        else:
            note = f"the new {dst.name} is in place but may not survive a power loss"
            if not moved_aside:
                note += f"; {kept}"
        raise CheckpointWriteError(f"could not {what}: {doing[0]} failed with {errno_name(e)} ({e.strerror or e}); {note}",
                                   hint=hint_for(e, parent), where=str(parent), errno=e.errno) from e
    except BaseException:
        if not published:
            remove(tmp)
            if moved_aside and not dst.exists():
                try:
                    _rename(aside, dst)
                except OSError:
                    pass
        raise
    if moved_aside:
        remove(aside)  # a leftover is dropped by the next recover()
    return dst


def write_tree_atomic(dst: Path, write: Callable[[Path], None]) -> Path:
    """Publish a directory that `write(tmp)` fills (best/ and the final adapter/)."""
    dst = Path(dst)
    for w in recover(dst):
        warn(w)
    kept = f"the existing {dst.name} is unchanged" if dst.exists() else f"{dst.name} was not written"

    def fill(tmp: Path, doing: list[str]) -> None:
        doing[0] = f"writing {tmp.name}"
        write(tmp)

    return publish(dst, fill, what=f"publish {dst.name}", kept=kept)


# ----------------------------------------------------------------------------------------- the lock

class RunLock:
    """An exclusive lock on a run directory, held while one process trains it (fcntl.flock).

    The lock file sits beside the run directory (`runs/<exp>/.<run>.lock`), so `--resume never` can move
    the earlier run aside while the lock is held.

    A second `specc run` on the same directory stops at once with an error naming the holder. The lock
    goes with the process (a kill -9 frees it), so a stale lock file never blocks a resume.
    """

    def __init__(self, run_dir: Path):
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.run_dir} is being trained by {holder}",
                            hint="wait for that run to finish (or stop it); two trainers on one run directory would "
                                 "overwrite each other's checkpoints") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"specc run pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
