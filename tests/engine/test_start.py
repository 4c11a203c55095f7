"""decide_start: where a run starts, decided without a backend and without touching the run directory.

Checkpoints here are real ones (write_checkpoint with small arrays); the rules are checked on them,
and every refusal leaves the directory byte for byte as it was.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specc.engine.checkpoint import write_checkpoint
from specc.engine.start import EXTEND, FRESH, INIT_FROM, RESUME, decide_start
from specc.errors import UserError
from specc.spec.model import Continuation


def _ckpt(run_dir: Path, step: int, backend: str = "torch") -> Path:
    return write_checkpoint(run_dir / "checkpoints", step, {"adapter/w": np.ones(3, np.float32)},
                            {"step": step, "backend": backend}, keep_last=5)


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def decide(run_dir, *, resume="auto", extend=None, init_from=None, continuation=None, total=100, backend="torch"):
    return decide_start(run_dir=run_dir, resume=resume, extend_steps=extend, init_from=init_from,
                        continuation=continuation, total_steps=total, backend=backend)


def test_fresh_resume_and_extend(tmp_path):
    run = tmp_path / "main"
    assert decide(run).kind == FRESH
    _ckpt(run, 10)
    latest = _ckpt(run, 20)
    s = decide(run)
    assert (s.kind, s.checkpoint) == (RESUME, latest)
    s = decide(run, extend=50)
    assert (s.kind, s.extend_to, s.checkpoint) == (EXTEND, 50, latest)
    other = tmp_path / "other"
    s = decide(tmp_path / "new", resume=str(run))
    assert (s.kind, s.checkpoint) == (RESUME, latest)
    assert not other.exists()


def test_resume_never_archives_only_what_exists(tmp_path):
    run = tmp_path / "main"
    assert decide(run, resume="never").archive is False
    _ckpt(run, 10)
    assert decide(run, resume="never").archive is True


@pytest.mark.parametrize("kwargs,message", [
    (dict(extend=50, init_from=Path("x")), "two different strategies"),
    (dict(extend=50, resume="never"), "cannot be combined with --resume never"),
    (dict(init_from=Path("x"), resume="somewhere"), "cannot be combined with --resume PATH"),
])
def test_conflicting_flags_are_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        decide(tmp_path / "main", **kwargs)


def test_init_from_over_existing_checkpoints_is_not_silently_ignored(tmp_path):
    run, donor = tmp_path / "main", tmp_path / "donor"
    _ckpt(run, 10)
    _ckpt(donor, 30)
    before = _tree(run)
    with pytest.raises(UserError, match="--init-from would be ignored") as err:
        decide(run, init_from=donor)
    assert "--resume never" in err.value.hint
    assert _tree(run) == before
    s = decide(run, init_from=donor, resume="never")
    assert (s.kind, s.archive, s.init_from.name) == (INIT_FROM, True, "step_0000030")


def test_a_bad_init_from_is_refused_before_anything_moves(tmp_path):
    run = tmp_path / "main"
    _ckpt(run, 10)
    before = _tree(run)
    for bad in (tmp_path / "nowhere", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(UserError, match="no such checkpoint|no valid checkpoint"):
            decide(run, init_from=bad, resume="never")
    assert _tree(run) == before and not (tmp_path / "main.prev-1").exists()


def test_extend_must_go_beyond_the_checkpoint(tmp_path):
    run = tmp_path / "main"
    _ckpt(run, 40)
    with pytest.raises(UserError, match="not beyond the checkpoint's step 40"):
        decide(run, extend=40)
    with pytest.raises(UserError, match="has no checkpoint to extend"):
        decide(tmp_path / "fresh", extend=40)


def test_a_checkpoint_of_another_backend_says_which_and_what_to_do(tmp_path):
    run = tmp_path / "main"
    _ckpt(run, 10, backend="torch")
    with pytest.raises(UserError, match="written by the torch backend; this run uses mlx") as err:
        decide(run, backend="mlx")
    assert "--backend torch" in err.value.hint


def test_continuation_extends_or_restarts_from_another_run(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    src = _ckpt(old, 100)
    s = decide(new, continuation=Continuation(from_run=str(old), strategy="extend", at_step=100), total=200)
    assert (s.kind, s.checkpoint, s.extend_to) == (EXTEND, src, 200)
    s = decide(new, continuation=Continuation(from_run=str(old), strategy="restart", at_step=100))
    assert (s.kind, s.init_from) == (INIT_FROM, src)
    _ckpt(new, 150)                                    # once the continuation has checkpoints of its own, it resumes them
    assert decide(new, continuation=Continuation(from_run=str(old), strategy="extend", at_step=100)).kind == RESUME


def test_deciding_repairs_nothing(tmp_path):
    run = tmp_path / "main"
    _ckpt(run, 10)
    ck = _ckpt(run, 20)
    ck.rename(ck.with_name(ck.name + ".old-999"))     # a replace interrupted: find_latest_valid would restore it
    (run / "checkpoints" / "step_0000030.tmp-998").mkdir()   # an unfinished save
    before = _tree(run)
    s = decide(run)
    assert s.kind == RESUME and s.checkpoint.name == "step_0000020.old-999"
    assert _tree(run) == before and (run / "checkpoints" / "step_0000030.tmp-998").is_dir()


# --- one trainer per run directory --------------------------------------------------------------

def test_a_second_trainer_on_the_same_run_directory_is_refused(tmp_path):
    import subprocess
    import sys

    from specc.engine.atomic import RunLock

    run = tmp_path / "runs" / "exp" / "main"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from specc.engine.atomic import RunLock; "
        f"RunLock(Path({str(run)!r})).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"is being trained by specc run pid {holder.pid}"):
            RunLock(run).acquire()
    finally:
        holder.kill()                       # kill -9: the lock goes with the process
        holder.wait()
    lock = RunLock(run).acquire()
    lock.release()
    assert not run.exists()                 # the lock sits beside the run directory, so --resume never can move it


def test_a_backend_neutral_checkpoint_of_another_backend_resumes_with_a_note(tmp_path):
    run = tmp_path / "main"
    ck = write_checkpoint(run / "checkpoints", 10, {"adapter/w": np.ones(3, np.float32)},
                          {"step": 10, "backend": "torch", "layout": "canonical/1"}, keep_last=5)
    s = decide(run, backend="mlx")
    assert (s.kind, s.checkpoint) == (RESUME, ck)
    assert any("written by the torch backend" in w and "RNG state cannot travel" in w for w in s.warnings), s.warnings
    assert decide(run, backend="mlx", extend=20).kind == EXTEND


def test_init_from_takes_an_adapter_directory(tmp_path):
    from backends.layout import write_mlx, write_peft

    weights = {"model.layers.0.self_attn.q_proj.lora_A.weight": np.ones((2, 4), np.float32),
               "model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((4, 2), np.float32)}
    for fmt, write in (("peft", write_peft), ("mlx", write_mlx)):
        write(tmp_path / fmt, weights, alpha=4, dropout=0, base_model="b", n_blocks=1)
        s = decide(tmp_path / "main", init_from=tmp_path / fmt)
        assert (s.kind, s.init_from) == (INIT_FROM, tmp_path / fmt)
    with pytest.raises(UserError, match="no valid checkpoint found") as err:
        decide(tmp_path / "main", init_from=tmp_path)
    assert "adapter_model.safetensors" in err.value.hint
