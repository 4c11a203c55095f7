"""The checkpoint store: bit-exact roundtrip, pruning, corruption detection, fault injection, kills."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import resource
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specc.engine.atomic as atomic
from specc.engine.checkpoint import (
    CheckpointWriteError,
    CorruptCheckpoint,
    UnsupportedCheckpointFormat,
    find_latest_valid,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    recover_tree,
    verify_checkpoint,
    write_checkpoint,
    write_tree_atomic,
)
from specc.errors import UserError


@pytest.fixture
def real_fsync():
    """Request this to keep real fsyncs; other tests skip them (they cost ~5 ms each on a busy disk)."""


@pytest.fixture(autouse=True)
def _skip_fsync(request, monkeypatch):
    if "real_fsync" not in request.fixturenames:
        monkeypatch.setattr(atomic, "_fsync", lambda fd: None)


def arrays_for(step: int, n: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "adapter/layers.0.q_proj.lora_A": rng.standard_normal((4, n), dtype=np.float32),
        "optim/layers.0.q_proj.lora_A/exp_avg": rng.standard_normal((4, n), dtype=np.float32),
        "optim/step": np.array(step, dtype=np.int64),
        "rng/torch": rng.integers(0, 256, size=32, dtype=np.uint8),
    }


def save(root: Path, step: int, *, keep_last: int = 100, **kw) -> Path:
    return write_checkpoint(root, step, arrays_for(step), {"step": step, "data_pos": step * 10},
                            keep_last=keep_last, **kw)


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape, k
        assert x.dtype.newbyteorder("<") == y.dtype.newbyteorder("<"), k
        assert x.astype(x.dtype.newbyteorder("<")).tobytes() == y.tobytes(), k


def put(ckpt_dir: Path, rel: str, data: bytes) -> None:
    """What a write_extra callback does: add a file (by convention under adapter/)."""
    (ckpt_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / rel).write_bytes(data)


def names(root: Path) -> list[str]:
    return sorted(os.listdir(root))


# --------------------------------------------------------------------------------------------------
# Roundtrip and layout

def test_roundtrip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    weird_f32 = rng.integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    weird_f32[:6] = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, np.float32(3.4e38)], dtype=np.float32)
    weird_f32[6:7].view(np.uint32)[:] = 0x7FC00123  # NaN with a payload
    big = np.arange(60, dtype=np.int64).reshape(6, 10)
    arrays = {
        "adapter/w": weird_f32.reshape(10, 100),
        "adapter/t": big.T,                                   # non-contiguous view
        "optim/i64": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max], dtype=np.int64),
        "rng/u8": rng.integers(0, 256, size=5000, dtype=np.uint8),
        "rng/u32": rng.integers(0, 2**32, size=624, dtype=np.uint64).astype(np.uint32),
        "adapter/bf16_bits": rng.integers(0, 2**16, size=(3, 7), dtype=np.uint16),
        "f16": rng.standard_normal(9).astype(np.float16),
        "f64": rng.standard_normal(9),
        "flags": np.array([True, False, True]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "big_endian": np.arange(5, dtype=">f4"),
    }
    trainer_state = {
        "step": 250, "micro_step": 1000, "data": {"epoch": 1, "position": 12345},
        "rng": {"python": [3, [2**32 - 1, 7], None], "numpy": {"state": 2**100 + 1, "inc": 5}},
        "best": {"metric": 0.1 + 0.2, "step": 200}, "lr": 1e-310, "name": "résumé ✓",
    }
    path = write_checkpoint(tmp_path / "ckpt", 250, arrays, trainer_state, keep_last=3)
    assert path == tmp_path / "ckpt" / "step_0000250"
    loaded, state = load_checkpoint(path)
    assert_same_arrays(arrays, loaded)
    assert loaded["adapter/w"].reshape(-1).view(np.uint32)[6] == 0x7FC00123
    assert state == trainer_state
    assert loaded["adapter/w"].flags.writeable


def test_save_arrays_writes_views_in_their_logical_order(tmp_path):
    """safetensors' own save_file writes a transposed view's buffer as is (scrambled, no error):
    every adapter file specc writes goes through save_arrays, which does not."""
    from safetensors.numpy import load_file

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic.save_arrays({"t": a.T, "s": a[:, ::2]}, tmp_path / "x.safetensors")
    back = load_file(str(tmp_path / "x.safetensors"))
    assert np.array_equal(back["t"], a.T) and np.array_equal(back["s"], a[:, ::2])


def test_layout_and_manifest(tmp_path):
    def extra(ckpt_dir: Path) -> None:
        assert sorted(os.listdir(ckpt_dir)) == ["state.safetensors", "trainer_state.json"]
        put(ckpt_dir, "adapter/adapter_config.json", b'{"r": 8}')
        put(ckpt_dir, "adapter/sub/adapter_model.safetensors", b"\x00" * 100)

    root = tmp_path / "runs" / "exp" / "run" / "checkpoints"
    path = write_checkpoint(root, 250, arrays_for(250), {"micro_step": 3}, write_extra=extra, keep_last=2)
    assert names(root) == ["step_0000250"]
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "adapter/adapter_config.json", "adapter/sub/adapter_model.safetensors",
        "manifest.json", "state.safetensors", "trainer_state.json"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["step"] == 250
    assert sorted(manifest["files"]) == ["adapter/adapter_config.json", "adapter/sub/adapter_model.safetensors",
                                         "state.safetensors", "trainer_state.json"]
    for rel, entry in manifest["files"].items():
        data = (path / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    ts = json.loads((path / "trainer_state.json").read_text())
    assert ts == {"format_version": 1, "step": 250, "micro_step": 3}
    _, state = load_checkpoint(path)
    assert state == {"step": 250, "micro_step": 3}
    assert b"pickle" not in (path / "state.safetensors").read_bytes()[:200]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fds")
def test_fsync_order(tmp_path, monkeypatch, real_fsync):
    synced: list[str] = []
    real = atomic._fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(atomic, "_fsync", record)
    root = tmp_path / "c"
    save(root, 1)
    synced.clear()
    path = save(root, 2, write_extra=lambda d: put(d, "adapter/x.bin", b"x"))
    tmp = str(root / f"step_0000002.tmp-{os.getpid()}")
    files = [tmp + "/" + rel for rel in ("state.safetensors", "trainer_state.json", "adapter/x.bin")]
    assert all(f in synced for f in files + [tmp + "/adapter", tmp])
    manifest_at = synced.index(tmp + "/manifest.json")
    assert manifest_at > max(synced.index(f) for f in files + [tmp + "/adapter"])  # manifest last...
    assert synced[manifest_at + 1:] == [tmp, str(root)]     # ...then the tmp dir, then (after rename) root
    assert path.name == "step_0000002"


_DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int16, np.int8,
           np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


@st.composite
def _array(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize,
                         max_size=int(np.prod(shape)) * dtype.itemsize))
    if dtype == np.bool_:
        return np.frombuffer(bytes(b & 1 for b in raw), dtype=dtype).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(min_size=1, max_size=12), _array(), max_size=4))
def test_roundtrip_property(tmp_path, arrays):
    path = write_checkpoint(tmp_path / "p", 1, arrays, {}, keep_last=1)
    loaded, _ = load_checkpoint(path)
    assert_same_arrays(arrays, loaded)


def test_rejects_bad_inputs_without_writing(tmp_path):
    root = tmp_path / "c"
    with pytest.raises(TypeError, match="dtype"):
        write_checkpoint(root, 1, {"x": np.array([1 + 2j])}, {}, keep_last=1)   # complex128
    with pytest.raises(TypeError, match="dtype"):
        write_checkpoint(root, 1, {"x": np.array(["a"], dtype=object)}, {}, keep_last=1)
    with pytest.raises(TypeError, match="NaN"):
        write_checkpoint(root, 1, {}, {"best": float("nan")}, keep_last=1)
    with pytest.raises(TypeError, match="JSON"):
        write_checkpoint(root, 1, {}, {"x": object()}, keep_last=1)
    with pytest.raises(ValueError, match="step"):
        write_checkpoint(root, 1, {}, {"step": 2}, keep_last=1)
    with pytest.raises(ValueError, match="keep_last"):
        write_checkpoint(root, 1, {}, {}, keep_last=0)
    assert not root.exists()


# --------------------------------------------------------------------------------------------------
# Pruning

def test_keep_last_keeps_protected_best(tmp_path):
    root = tmp_path / "c"
    for step in range(1, 7):
        save(root, step, keep_last=2, protect=[2])
    assert [s for s, _ in list_checkpoints(root)] == [2, 5, 6]
    assert names(root) == ["step_0000002", "step_0000005", "step_0000006"]
    assert find_latest_valid(root) == (root / "step_0000006", [])
    assert prune_checkpoints(root, keep_last=1) == [2, 5]
    assert names(root) == ["step_0000006"]


def test_just_written_step_is_never_pruned(tmp_path):
    root = tmp_path / "c"
    save(root, 10)                 # e.g. a later checkpoint that was skipped as corrupt on resume
    save(root, 3, keep_last=1)
    assert [s for s, _ in list_checkpoints(root)] == [3, 10]


def test_prune_failure_never_fails_the_save(tmp_path, monkeypatch, capsys):
    root = tmp_path / "c"
    save(root, 1)
    real = atomic._rename

    def no_del(src, dst):
        if ".del-" in str(dst):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real(src, dst)

    monkeypatch.setattr(atomic, "_rename", no_del)
    save(root, 2, keep_last=1)
    assert names(root) == ["step_0000001", "step_0000002"]
    assert "could not prune" in capsys.readouterr().err   # a warning in the run log


# --------------------------------------------------------------------------------------------------
# Corruption: the newest checkpoint is bad -> skipped with a warning, the previous one is used

def _flip_byte(p: Path, offset: int) -> None:
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x01
    p.write_bytes(bytes(data))


def _rewrite_manifest(path: Path, fn) -> None:
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


CORRUPTIONS = {
    "truncated state": (lambda p: os.truncate(p / "state.safetensors", 100), "bytes"),
    "bit flip in state": (lambda p: _flip_byte(p / "state.safetensors", -3), "sha256"),
    "bit flip in trainer_state": (lambda p: _flip_byte(p / "trainer_state.json", 5), "sha256"),
    "bit flip in adapter": (lambda p: _flip_byte(p / "adapter" / "w.bin", 0), "sha256"),
    "missing adapter file": (lambda p: (p / "adapter" / "w.bin").unlink(), "missing"),
    "missing manifest": (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    "garbage manifest": (lambda p: (p / "manifest.json").write_bytes(b"{\"files\": [1, 2"), "not valid JSON"),
    "binary manifest": (lambda p: (p / "manifest.json").write_bytes(b"\xff\xfe\x00"), "not valid JSON"),
    "manifest wrong hash": (lambda p: _rewrite_manifest(
        p, lambda m: m["files"]["state.safetensors"].update(sha256="0" * 64)), "sha256"),
    "manifest wrong step": (lambda p: _rewrite_manifest(p, lambda m: m.update(step=7)), "says step 7"),
    "manifest without files": (lambda p: _rewrite_manifest(p, lambda m: m.pop("files")), "'files'"),
    "manifest path escape": (lambda p: _rewrite_manifest(
        p, lambda m: m["files"].update({"../x": {"sha256": "0", "size": 0}})), "invalid path"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_newest_is_skipped(tmp_path, kind):
    root = tmp_path / "c"
    extra = lambda d: put(d, "adapter/w.bin", os.urandom(64))  # noqa: E731
    save(root, 1, write_extra=extra)
    newest = save(root, 2, write_extra=extra)
    corrupt, reason = CORRUPTIONS[kind]
    corrupt(newest)
    with pytest.raises(CorruptCheckpoint, match=reason):
        verify_checkpoint(newest)
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(newest)
    path, warnings = find_latest_valid(root)
    assert path == root / "step_0000001"
    assert len(warnings) == 1 and "step_0000002" in warnings[0] and reason in warnings[0]
    arrays, state = load_checkpoint(path)
    assert_same_arrays(arrays_for(1), arrays)
    assert state["step"] == 1
    assert newest.exists()  # kept for inspection, never deleted silently


def test_extra_unlisted_files_are_tolerated(tmp_path):
    path = save(tmp_path / "c", 1)
    (path / "notes.txt").write_text("hi")
    verify_checkpoint(path)


def test_all_corrupt_and_empty(tmp_path):
    assert find_latest_valid(tmp_path / "nope") == (None, [])
    root = tmp_path / "c"
    (save(root, 1) / "manifest.json").unlink()
    path, warnings = find_latest_valid(root)
    assert path is None and len(warnings) == 1


def test_newer_format_is_refused_not_skipped(tmp_path):
    root = tmp_path / "c"
    save(root, 1)
    _rewrite_manifest(save(root, 2), lambda m: m.update(format_version=2))
    with pytest.raises(UnsupportedCheckpointFormat, match="upgrade"):
        find_latest_valid(root)
    assert issubclass(UnsupportedCheckpointFormat, UserError)


# --------------------------------------------------------------------------------------------------
# Leftovers of interrupted saves

def test_leftover_tmp_dirs_are_cleaned(tmp_path):
    root = tmp_path / "c"
    save(root, 1)
    tmp = root / "step_0000002.tmp-99999"
    tmp.mkdir()
    (tmp / "state.safetensors").write_bytes(b"partial")
    (root / "step_0000001.del-4").mkdir()                 # interrupted prune
    (root / "step_0000003.tmp-12").write_bytes(b"x")      # even a stray file
    path, warnings = find_latest_valid(root)
    assert path == root / "step_0000001"
    assert names(root) == ["step_0000001"]
    assert any("step_0000002.tmp-99999" in w for w in warnings)


def test_interrupted_replace_is_restored(tmp_path):
    root = tmp_path / "c"
    save(root, 1)
    old = save(root, 2)
    # The crash window of a re-save: old copy set aside, new copy complete but not yet renamed.
    os.rename(old, root / "step_0000002.old-4242")
    new_tmp = root / "step_0000002.tmp-4242"
    new_tmp.mkdir()
    path, warnings = find_latest_valid(root)
    assert path == root / "step_0000002" and any("restored" in w for w in warnings)
    assert names(root) == ["step_0000001", "step_0000002"]
    assert_same_arrays(arrays_for(2), load_checkpoint(path)[0])
    # An aside copy next to a complete step_N is just dropped.
    (root / "step_0000002.old-7").mkdir()
    assert find_latest_valid(root)[0] == path and names(root) == ["step_0000001", "step_0000002"]


def test_resave_existing_step_replaces_it(tmp_path):
    root = tmp_path / "c"
    save(root, 1)
    save(root, 2)
    new = {"adapter/x": np.arange(3, dtype=np.float32)}
    path = write_checkpoint(root, 2, new, {"resaved": True}, keep_last=5)
    assert names(root) == ["step_0000001", "step_0000002"]
    arrays, state = load_checkpoint(path)
    assert_same_arrays(new, arrays)
    assert state == {"step": 2, "resaved": True}


# --------------------------------------------------------------------------------------------------
# Injected filesystem faults: a clear CheckpointWriteError, previous checkpoint intact, no litter

def _enospc_in_safetensors(arrays, path):
    Path(path).write_bytes(b"\x00" * 10)   # a partial file, as a full disk leaves it
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _enospc_in_json(path, data):
    Path(path).write_bytes(data[:3])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fail_on_call(n: int, err: int, real):
    calls = [0]

    def fn(*args):
        calls[0] += 1
        if calls[0] == n:
            raise OSError(err, os.strerror(err))
        return real(*args)
    return fn


FAULTS = {
    "ENOSPC writing state": ("save_arrays", lambda: _enospc_in_safetensors, "ENOSPC", "state.safetensors"),
    "ENOSPC writing json": ("_write_bytes", lambda: _enospc_in_json, "ENOSPC", "trainer_state.json"),
    "EIO on first fsync": ("_fsync", lambda: _fail_on_call(1, errno.EIO, atomic._fsync), "EIO", "trainer_state.json"),
    "EIO on fsync of a tree file": ("_fsync", lambda: _fail_on_call(2, errno.EIO, atomic._fsync), "EIO", "syncing adapter/w.bin"),
    "EIO on manifest fsync": ("_fsync", lambda: _fail_on_call(7, errno.EIO, atomic._fsync), "EIO", "manifest.json"),
    "EACCES on mkdir": ("_mkdir", lambda: _fail_on_call(1, errno.EACCES, atomic._mkdir), "EACCES", "creating step_0000002.tmp-"),
    "EXDEV on rename": ("_rename", lambda: _fail_on_call(1, errno.EXDEV, atomic._rename), "EXDEV", "renaming step_0000002.tmp-"),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_write_faults(tmp_path, monkeypatch, kind):
    root = tmp_path / "c"
    extra = lambda d: put(d, "adapter/w.bin", b"w" * 10)  # noqa: E731
    save(root, 1, write_extra=extra)
    seam, make, errname, what = FAULTS[kind]
    monkeypatch.setattr(atomic, seam, make())
    with pytest.raises(CheckpointWriteError) as exc:
        save(root, 2, write_extra=extra)
    msg = str(exc.value)
    assert errname in msg and what in msg, msg
    assert "the previous checkpoint step_0000001 is intact" in msg
    assert exc.value.hint and isinstance(exc.value, UserError)
    assert names(root) == ["step_0000001"]            # no tmp litter
    monkeypatch.undo()
    verify_checkpoint(root / "step_0000001")
    assert find_latest_valid(root) == (root / "step_0000001", [])


def test_rename_failure_during_resave_restores_existing(tmp_path, monkeypatch):
    root = tmp_path / "c"
    save(root, 1)
    monkeypatch.setattr(atomic, "_rename", _fail_on_call(2, errno.EIO, atomic._rename))  # 1: aside ok, 2: tmp->final
    with pytest.raises(CheckpointWriteError, match="the existing step_0000001 is intact"):
        write_checkpoint(root, 1, {"x": np.zeros(2, np.float32)}, {}, keep_last=1)
    monkeypatch.undo()
    assert names(root) == ["step_0000001"]
    assert_same_arrays(arrays_for(1), load_checkpoint(root / "step_0000001")[0])


def test_write_extra_exception_propagates_and_cleans(tmp_path):
    root = tmp_path / "c"
    save(root, 1)

    def boom(d: Path) -> None:
        (d / "half").write_bytes(b"x")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        save(root, 2, write_extra=boom)
    assert names(root) == ["step_0000001"]


def test_real_write_error_from_safetensors(tmp_path, real_fsync):
    """A real (not mocked) I/O error: RLIMIT_FSIZE makes writes fail with EFBIG, in a forked child."""
    root = tmp_path / "c"
    save(root, 1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
            write_checkpoint(root, 2, {"big": np.zeros(100_000, np.float32)}, {}, keep_last=5)
        except CheckpointWriteError as e:
            os.write(w, str(e).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    msg = os.read(r, 10000).decode()
    os.close(r)
    assert os.waitstatus_to_exitcode(status) == 0, msg
    assert "EFBIG" in msg and "state.safetensors" in msg and "step_0000001 is intact" in msg
    assert names(root) == ["step_0000001"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_permission_denied(tmp_path):
    root = tmp_path / "c"
    save(root, 1)
    root.chmod(0o500)
    try:
        with pytest.raises(CheckpointWriteError, match="EACCES"):
            save(root, 2)
    finally:
        root.chmod(0o700)
    assert names(root) == ["step_0000001"]


# --------------------------------------------------------------------------------------------------
# Atomic publication of best/ and adapter/

def copy_tree_atomic(src: Path, dst: Path) -> Path:
    """best/ published as a copy of another directory (what the tests exercise write_tree_atomic with)."""
    import shutil

    return write_tree_atomic(dst, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))


def test_copy_tree_atomic(tmp_path, monkeypatch):
    src1, src2 = tmp_path / "s1", tmp_path / "s2"
    for src, text in ((src1, "one"), (src2, "two")):
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "f.txt").write_text(text)
    best = tmp_path / "run" / "best"
    copy_tree_atomic(src1, best)
    assert (best / "sub" / "f.txt").read_text() == "one"
    copy_tree_atomic(src2, best)
    assert (best / "sub" / "f.txt").read_text() == "two"
    assert names(best.parent) == ["best"]
    # A failing swap leaves the previous best/ untouched and no litter.
    monkeypatch.setattr(atomic, "_rename", _fail_on_call(2, errno.EIO, atomic._rename))
    with pytest.raises(CheckpointWriteError, match="EIO.*the existing best is unchanged"):
        copy_tree_atomic(src1, best)
    monkeypatch.undo()
    assert (best / "sub" / "f.txt").read_text() == "two"
    assert names(best.parent) == ["best"]
    # A crash between the two renames is repaired.
    os.rename(best, best.parent / "best.old-77")
    (best.parent / "best.tmp-77").mkdir()
    assert recover_tree(best)
    assert names(best.parent) == ["best"] and (best / "sub" / "f.txt").read_text() == "two"


def test_write_tree_atomic_with_writer(tmp_path):
    out = write_tree_atomic(tmp_path / "adapter", lambda d: (d / "adapter_config.json").write_text("{}"))
    assert (out / "adapter_config.json").read_text() == "{}"
    with pytest.raises(ValueError):
        write_tree_atomic(tmp_path / "adapter", lambda d: (_ for _ in ()).throw(ValueError("x")))
    assert names(tmp_path) == ["adapter"]


# --------------------------------------------------------------------------------------------------
# Crash simulation: SIGKILL a writer at random moments; the latest valid checkpoint always loads.

def _writer_child(root: Path, start: int, progress_fd: int) -> None:
    try:
        # Re-save the step we resumed from first (exercises the replace path), then keep going.
        for step in range(start, start + 10_000):
            write_checkpoint(root, step, arrays_for(step, n=16_384), {"step": step},
                             write_extra=lambda d, s=step: put(d, "adapter/a.bin", bytes([s % 256]) * 4096),
                             keep_last=2, protect=[1])
            os.write(progress_fd, b".")
    finally:
        os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_random_moments(tmp_path, real_fsync):
    root = tmp_path / "c"
    rnd = random.Random(1234)
    last_step = -1
    deadline = time.monotonic() + 8
    kills = 0
    while kills < 15 and time.monotonic() < deadline:
        start = max(last_step, 0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _writer_child(root, start, w)
        os.close(w)
        for _ in range(rnd.choice([0, 1, 1, 2])):   # let 0-2 saves complete, then kill at a random moment
            os.read(r, 1)
        time.sleep(rnd.uniform(0.0, 0.06))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        kills += 1
        path, _warnings = find_latest_valid(root)
        assert not [n for n in names(root) if ".tmp-" in n or ".old-" in n or ".del-" in n]
        if path is None:
            assert last_step == -1, "a checkpoint existed before and vanished"
            continue
        arrays, state = load_checkpoint(path)          # verifies: never a corrupt one
        step = state["step"]
        assert step >= last_step, "the latest valid step went backwards"
        assert_same_arrays(arrays_for(step, n=16_384), arrays)
        assert (path / "adapter" / "a.bin").read_bytes() == bytes([step % 256]) * 4096
        last_step = step
    assert kills >= 8
    assert last_step > 0
