"""Where a run starts: fresh, resumed, extended (strategy A) or initialised from old weights (strategy B).

`decide_start` is a pure decision over the options, the spec's continuation and what is on disk. It
reads checkpoints (verifying them) but changes nothing, so every argument is checked before the run
directory is touched: a bad `--init-from` never archives the earlier run, and a flag that would be
ignored is an error, not a surprise. The session then applies the decision.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from specc.engine import checkpoint as ckpt
from specc.errors import UserError

FRESH, RESUME, EXTEND, INIT_FROM = "fresh", "resume", "extend", "init_from"


@dataclass(frozen=True)
class Start:
    kind: str                           # fresh | resume | extend | init_from
    reason: str                         # one sentence for the run log
    checkpoint: Path | None = None      # resume / extend: the checkpoint to load
    init_from: Path | None = None       # init_from: the checkpoint whose adapter weights start the run
    extend_to: int | None = None        # extend: the new total steps
    archive: bool = False               # --resume never over existing checkpoints: move the old run aside first
    warnings: tuple[str, ...] = field(default_factory=tuple)


def checkpoint_step(path: Path) -> int:
    """The step a verified checkpoint holds (its trainer_state.json), without loading its arrays."""
    try:
        return int(json.loads((Path(path) / ckpt.TRAINER_STATE_FILE).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ckpt.CorruptCheckpoint(f"cannot read its step: {exc}", where=str(path)) from None


def checkpoint_backend(path: Path) -> str | None:
    try:
        return json.loads((Path(path) / ckpt.TRAINER_STATE_FILE).read_text(encoding="utf-8")).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


def find_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or the newest valid one in a run (or checkpoints/) directory; read-only."""
    path = Path(path)
    if (path / ckpt.MANIFEST_FILE).exists():
        ckpt.verify_checkpoint(path)
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not root.is_dir():
        raise UserError(f"{path}: no such checkpoint or run directory",
                        hint="pass runs/<experiment>/<run> or a checkpoints/step_NNNNNNN directory")
    found, _ = ckpt.newest_valid(root)
    if found is None:
        raise UserError(f"{path}: no valid checkpoint found",
                        hint="every checkpoint there failed verification or none exists")
    return found


def decide_start(*, run_dir: Path, resume: str, extend_steps: int | None, init_from: Path | None,
                 continuation, total_steps: int | None, backend: str) -> Start:
    """The start a run makes, or a UserError naming the conflict; nothing on disk changes."""
    if extend_steps is not None and init_from is not None:
        raise UserError("--extend-steps and --init-from are two different strategies; use one",
                        hint="--extend-steps continues this run's schedule (A); --init-from starts a new one from old weights (B)")
    if extend_steps is not None and resume == "never":
        raise UserError("--extend-steps resumes a run; it cannot be combined with --resume never")
    if init_from is not None and resume not in ("auto", "never"):
        raise UserError("--init-from starts a new run from old weights; it cannot be combined with --resume PATH",
                        hint="use --resume PATH to continue that checkpoint, or --init-from PATH --resume never")
    own, warnings = ckpt.newest_valid(run_dir / "checkpoints")
    if resume == "never":
        archive = bool(ckpt.list_checkpoints(run_dir / "checkpoints"))
        if init_from is not None:
            source = find_checkpoint(init_from)
            return Start(INIT_FROM, f"--resume never --init-from {init_from}: a fresh schedule and optimizer from the "
                                    f"adapter of {source}", init_from=source, archive=archive)
        return Start(FRESH, "--resume never: a fresh run" + (" (the earlier run is kept aside)" if archive else ""),
                     archive=archive)
    if resume != "auto":
        source = find_checkpoint(Path(resume))
        return _resumed(source, extend_steps, backend, f"--resume {resume}", tuple(warnings))
    if own is not None:
        if init_from is not None:
            raise UserError(f"{run_dir} already has checkpoints (newest {own.name}); --init-from would be ignored",
                            hint="add --resume never to start a new run from those weights (the earlier run is kept "
                                 f"as {run_dir.name}.prev-N), or drop --init-from to resume this run")
        return _resumed(own, extend_steps, backend, "the newest valid checkpoint of this run", tuple(warnings))
    if continuation is not None and init_from is None:
        if continuation.strategy == "extend":
            source = find_checkpoint(Path(continuation.from_run))
            return _resumed(source, extend_steps or total_steps, backend,
                            f"continuation.from_run {continuation.from_run}", tuple(warnings))
        init_from = Path(continuation.from_run)
    if init_from is not None:
        source = find_checkpoint(init_from)
        return Start(INIT_FROM, f"a fresh schedule and optimizer from the adapter of {source} (strategy B)",
                     init_from=source, warnings=tuple(warnings))
    if extend_steps is not None:
        raise UserError(f"--extend-steps {extend_steps}: {run_dir} has no checkpoint to extend",
                        hint="train the run first, or pass --resume PATH to extend another run's checkpoint")
    return Start(FRESH, "no checkpoint yet: a fresh run", warnings=tuple(warnings))


def _resumed(source: Path, extend_to: int | None, backend: str, what: str, warnings: tuple) -> Start:
    step = checkpoint_step(source)
    wrote = checkpoint_backend(source)
    if wrote and wrote != backend:
        raise UserError(f"{source} was written by the {wrote} backend; this run uses {backend}",
                        hint=f"resume with --backend {wrote}, or start a new {backend} run with --resume never "
                             f"(the earlier run is kept aside)")
    if extend_to is None:
        return Start(RESUME, f"resume from {what} ({source.name})", checkpoint=source, warnings=warnings)
    if extend_to <= step:
        raise UserError(f"--extend-steps {extend_to} is not beyond the checkpoint's step {step} ({source})",
                        hint=f"pass a total above {step}, e.g. --extend-steps {2 * step}")
    return Start(EXTEND, f"extend {what} ({source.name}, step {step}) to {extend_to} steps (strategy A)",
                 checkpoint=source, extend_to=extend_to, warnings=warnings)
