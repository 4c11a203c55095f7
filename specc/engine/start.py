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

from backends.layout import CANONICAL, adapter_format, adapter_shape, read_adapter_dir
from specc.engine import checkpoint as ckpt
from specc.engine import travel
from specc.errors import UserError

FRESH, RESUME, EXTEND, INIT_FROM = "fresh", "resume", "extend", "init_from"
ADAPTER_HINT = ("; --init-from also takes an adapter directory: PEFT (adapter_config.json + adapter_model.safetensors) "
                "or mlx-lm (adapter_config.json + adapters.safetensors)")


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


def checkpoint_fields(path: Path) -> dict:
    """A checkpoint's trainer_state.json ({} when it cannot be read; verification reports that)."""
    try:
        saved = json.loads((Path(path) / ckpt.TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def find_init_source(path: Path) -> Path:
    """What --init-from names: an adapter directory (PEFT or mlx-lm), a checkpoint, or a run (its newest checkpoint)."""
    if adapter_format(Path(path)) is not None:
        return Path(path)
    return find_checkpoint(path)


def find_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or the newest valid one in a run (or checkpoints/) directory; read-only."""
    path = Path(path)
    if (path / ckpt.MANIFEST_FILE).exists():
        ckpt.verify_checkpoint(path)
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not root.is_dir():
        raise UserError(f"{path}: no such checkpoint or run directory",
                        hint="pass runs/<experiment>/<run> or a checkpoints/step_NNNNNNN directory" + ADAPTER_HINT)
    found, _ = ckpt.newest_valid(root)
    if found is None:
        raise UserError(f"{path}: no valid checkpoint found",
                        hint="every checkpoint there failed verification or none exists" + ADAPTER_HINT)
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
            source = find_init_source(init_from)
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
        source = find_init_source(init_from)
        return Start(INIT_FROM, f"a fresh schedule and optimizer from the adapter of {source} (strategy B)",
                     init_from=source, warnings=tuple(warnings))
    if extend_steps is not None:
        raise UserError(f"--extend-steps {extend_steps}: {run_dir} has no checkpoint to extend",
                        hint="train the run first, or pass --resume PATH to extend another run's checkpoint")
    return Start(FRESH, "no checkpoint yet: a fresh run", warnings=tuple(warnings))


def _resumed(source: Path, extend_to: int | None, backend: str, what: str, warnings: tuple) -> Start:
    step = checkpoint_step(source)
    saved = checkpoint_fields(source)
    wrote = saved.get("backend")
    if wrote and wrote != backend:
        if saved.get("layout") != CANONICAL:
            raise UserError(f"{source} was written by the {wrote} backend; this run uses {backend}, and the checkpoint "
                            f"is in the {wrote} backend's own layout (written before checkpoints were backend-neutral)",
                            hint=f"resume with --backend {wrote} (its next checkpoint can travel), or start a new "
                                 f"{backend} run with --resume never --init-from {source} (the earlier run is kept aside)")
        warnings = (*warnings, f"{source.name} was written by the {wrote} backend: its adapter and AdamW state are "
                               f"converted for {backend}; RNG state cannot travel between backends, so {backend}'s "
                               "continues from its own seeding (training.seed; it drives LoRA dropout only)")
    if extend_to is None:
        return Start(RESUME, f"resume from {what} ({source.name})", checkpoint=source, warnings=warnings)
    if extend_to <= step:
        raise UserError(f"--extend-steps {extend_to} is not beyond the checkpoint's step {step} ({source})",
                        hint=f"pass a total above {step}, e.g. --extend-steps {2 * step}")
    return Start(EXTEND, f"extend {what} ({source.name}, step {step}) to {extend_to} steps (strategy A)",
                 checkpoint=source, extend_to=extend_to, warnings=warnings)


@dataclass(frozen=True)
class Source:
    """What a start reads from disk, checked against the spec and the base model before anything moves."""
    weights: dict | None = None         # init_from: the canonical adapter weights
    probe: dict | None = None           # the probe its writer measured (travel.probe), if it recorded one
    from_backend: str | None = None     # the backend (or format) that wrote it
    notes: tuple[str, ...] = ()         # warnings for the run log


def check_source(start: Start, cfg, model_dir: Path, identity: dict) -> Source:
    """Refuse what cannot travel (another base model or tokenizer, other LoRA settings), with what differs.

    Runs after the model directory is known and before the run directory is touched."""
    n_blocks = int(identity["arch"].get("num_hidden_layers") or 0)
    spec = travel.lora_record(cfg.model.lora) if cfg.kind != "control" else None
    if start.kind in (RESUME, EXTEND):
        saved = checkpoint_fields(start.checkpoint)
        notes = travel.check_base(saved.get("base"), identity, start.checkpoint, cfg.model.path)
        rec = saved.get("lora")
        if spec and rec:
            travel.check_lora(spec, dict(rec, blocks=travel.blocks(rec["layers"], n_blocks),
                                         target_modules=sorted(rec["target_modules"])), n_blocks, start.checkpoint)
        return Source(probe=saved.get("probe"), from_backend=saved.get("backend"), notes=tuple(notes))
    if start.kind != INIT_FROM:
        return Source()
    src = start.init_from
    if spec is None:
        raise UserError(f"--init-from {src}: a control run trains no adapter", hint="drop --init-from for a control run")
    if adapter_format(src):
        adapter = read_adapter_dir(src)
        weights, alpha, note = adapter.weights, adapter.alpha, adapter.note
        base, probe, wrote = note.get("base"), note.get("probe"), note.get("backend") or f"a {adapter.format} adapter"
    else:
        arrays, saved = ckpt.load_checkpoint(src)
        weights = travel.checkpoint_adapter(arrays)
        alpha = (saved.get("lora") or {}).get("alpha")
        if alpha is None and adapter_format(src / "adapter"):
            alpha = read_adapter_dir(src / "adapter").alpha
        base, probe, wrote = saved.get("base"), saved.get("probe"), saved.get("backend")
    shape = adapter_shape(weights, str(src))
    travel.check_dims(shape, json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")), src,
                      cfg.model.path)
    travel.check_lora(spec, travel.found_lora(shape, alpha), n_blocks, src)
    notes = travel.check_base(base, identity, src, cfg.model.path)
    same_base = not base or base.get("weights") == identity["weights"]   # else the probe says nothing
    return Source(weights=weights, probe=probe if same_base else None, from_backend=wrote, notes=tuple(notes))
