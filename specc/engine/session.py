"""A run session: what the loop needs, set up before the first step and summarised after the last.

Setting up means choosing the backend, preparing the data, and deciding where training starts:
fresh, from the newest valid checkpoint (exact resume), extended (strategy A) or from old weights
(strategy B).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from backends import load_backend
from backends.protocol import Backend, LoraSettings, ModelSettings, OptimizerSettings
from specc.data.batches import BatchStream
from specc.data.sources import resolve_model_path
from specc.engine import checkpoint as ckpt
from backends.layout import NOTE
from specc.engine.atomic import RunLock
from specc.engine import distributed as dist
from specc.engine.config import RunConfig
from specc.engine.prepare import PreparedData, prepare_data
from specc.engine.select import choose_backend
from specc.engine import travel
from specc.engine.start import EXTEND, INIT_FROM, RESUME, check_source, decide_start
from specc.engine.state import TrainerState
from specc.engine.faults import fault_point
from specc.engine.summary import write_running, write_summary
from specc.engine.tasks import TaskScoring, score_lines
from specc.errors import UserError, staged
from specc.plan.schedule import ScheduleSpec, extend
from specc.tracking import open_tracker


@dataclass
class Session:
    cfg: RunConfig
    console: Console
    run_dir: Path
    backend: Backend
    backend_reason: str
    data: PreparedData
    stream: BatchStream | None
    schedule: ScheduleSpec | None
    total_steps: int
    state: TrainerState
    resumed: bool
    lock: RunLock | None = None     # held for the life of the process (a kill frees it)
    tasks: TaskScoring | None = None   # the spec's evaluation tasks (empty without an evaluation section)
    started: float = field(default_factory=time.time)
    base: dict | None = None        # travel.base_identity of the model directory
    probe_batch: object = None      # travel.probe_batch: the fixed batch whose loss a checkpoint records
    _round_trip_checked: bool = False
    _probed_at: tuple | None = None
    tracker: object | None = None   # specc.tracking.Tracker (MLflow, W&B), rank 0 only; None without `tracking`

    def export(self, path: Path, val_loss: float | None = None, score: dict | None = None,
               with_state: bool = False) -> None:
        """The adapter in its ecosystem's format, plus a small note of where it came from and what it fits (and,
        for best/ and adapter/, the adapter in the canonical layout, for scoring after training and `specc eval`)."""
        self.backend.export_adapter(path)
        note = {"experiment": self.cfg.experiment, "run": self.cfg.run, "step": self.state.step,
                "backend": self.backend.name, "base_model": self.cfg.model.path, "base": self.base,
                "lora": travel.lora_record(self.cfg.model.lora), "probe": self._probe()}
        if val_loss is not None:
            note["val_loss"] = val_loss
        if score is not None:
            note.update(score)
        (path / NOTE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
        if with_state:
            from specc.engine.atomic import save_arrays
            from specc.engine.tasks import ADAPTER_STATE

            adapter = {k: v for k, v in self.backend.state().items() if k.startswith("adapter/")}
            save_arrays(travel.to_checkpoint(self.backend, adapter)[0], path / ADAPTER_STATE)

    def publish_best(self, val_loss: float | None = None, score: dict | None = None) -> None:
        """best/: the adapter of the best step so far (never at step 0: that is the base model)."""
        step = self.state.step
        if step > 0 and dist.world().is_main:
            ckpt.write_tree_atomic(self.run_dir / "best", lambda d: (
                self.export(d, val_loss=val_loss, score=score, with_state=True), fault_point("best", step)))

    def _probe(self) -> dict | None:
        """The probe at this step (measured once: a checkpoint and its adapter/ note share it)."""
        if self.probe_batch is None:
            return None
        if self._probed_at is None or self._probed_at[0] != self.state.step:
            self._probed_at = (self.state.step, travel.probe(self.backend, self.probe_batch))
        return self._probed_at[1]

    def checkpoint(self) -> tuple[dict, dict]:
        """(arrays, trainer_state) of a checkpoint: the state in the canonical layout, and what it fits."""
        state = self.backend.state()
        arrays, layout = travel.to_checkpoint(self.backend, state)
        if layout and not self._round_trip_checked:
            travel.check_round_trip(self.backend, state, arrays)
            self._round_trip_checked = True
        return arrays, dict(self.trainer_state(), layout=layout, base=self.base,
                            lora=travel.lora_record(self.cfg.model.lora), probe=self._probe())

    def trainer_state(self) -> dict:
        """Everything an exact resume needs besides the arrays (those come from backend.state())."""
        return dict(self.state.to_json(), data_position=self.stream.state() if self.stream else None,
                    schedule=self.schedule.to_dict() if self.schedule else None, total_steps=self.total_steps,
                    wall_s=self.state.wall_s_before + (time.time() - self.started))

    def write_running(self) -> None:
        write_running(self)

    def close(self, failed: bool = False) -> None:
        """Let the next trainer in: release the run directory's lock (process exit would too)."""
        if failed and self.tracker is not None:
            self.tracker.close("failed")
        if self.lock is not None:
            self.lock.release()

    def write_summary(self, status: str, reason: str, results: dict | None = None) -> dict:
        return write_summary(self, status, reason, results)


def _archive_run_dir(run_dir: Path, console: Console) -> None:
    """--resume never on a run that has checkpoints: keep them, under a new name."""
    k = 1
    while run_dir.with_name(f"{run_dir.name}.prev-{k}").exists():
        k += 1
    target = run_dir.with_name(f"{run_dir.name}.prev-{k}")
    os.rename(run_dir, target)
    console.print(f"--resume never: the earlier run was moved to {target} (nothing deleted)", markup=False)


@staged("run")
def open_session(cfg: RunConfig, opts, console: Console, backend: Backend | None = None) -> Session:
    """Everything up to the first step. Problems raise UserError before any training happens, and every
    argument is checked (decide_start) before the run directory is touched.

    `backend` injects an instance (tests wrap a real backend to inject faults); normally the registry builds it.
    """
    cfg = cfg.for_stage(opts.stage)
    run_dir = cfg.output_dir
    if backend is None:
        name, reason = choose_backend(opts.backend or cfg.backend)
    else:
        name, reason = backend.name, "injected"
    start = decide_start(run_dir=run_dir, resume=opts.resume, extend_steps=opts.extend_steps,
                         init_from=opts.init_from, continuation=cfg.continuation, total_steps=cfg.total_steps,
                         backend=name)
    if backend is None:
        backend = load_backend(name)
    world = dist.init()
    lock = RunLock(run_dir).acquire() if world.is_main else None   # one trainer per run directory
    if world.active:
        cfg = _data_parallel(cfg, world, name, console)
    console.print(f"specc: {cfg.experiment}/{cfg.run} on backend {name} ({reason}); start: {start.reason}", markup=False)
    for w in start.warnings:
        console.print(f"warning: {w}", markup=False)
    if name == "mlx" and sys.platform == "linux":
        console.print("warning: mlx on Linux runs on the CPU (mlx[cpu]), about 35× slower than the torch backend on "
                      "the same CPU (measured on the quickstart); use --backend torch here, mlx on Apple silicon",
                      markup=False)
    model_dir = resolve_model_path(cfg.model.path, log=lambda m: console.print(m, markup=False))
    data = prepare_data(cfg, model_dir)
    _report_data(console, data)
    base = travel.base_identity(model_dir)
    source = check_source(start, cfg, model_dir, base)      # what cannot travel is refused before anything moves
    for w in source.notes:
        console.print(f"warning: {w}", markup=False)

    if world.is_main and start.archive:
        _archive_run_dir(run_dir, console)
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        for published in ("best", "adapter"):   # a crash mid-swap leaves the old copy aside: put it back
            for w in ckpt.recover_tree(run_dir / published):
                console.print(f"warning: {w}", markup=False)
        (run_dir / "config.json").write_text(json.dumps(cfg.raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    dist.barrier()   # the other ranks read nothing rank 0 is still moving

    backend.setup(
        ModelSettings(path=model_dir, quantization=cfg.model.quantization, dtype=cfg.model.dtype,
                      gradient_checkpointing=cfg.model.gradient_checkpointing, attention=cfg.model.attention,
                      compile=cfg.model.compile, liger=cfg.model.liger, loss_chunk=cfg.model.loss_chunk),
        _lora_settings(cfg),
        OptimizerSettings(weight_decay=cfg.training.weight_decay, grad_clip=cfg.training.grad_clip),
        seed=cfg.training.seed,
    )
    total = data.total_steps
    schedule = cfg.schedule if cfg.schedule is not None and cfg.schedule.total_steps == total else _schedule(cfg, total)
    state, stream = TrainerState(data_seed=cfg.training.seed), None
    probe_batch = travel.probe_batch(int(base["arch"].get("vocab_size") or data.pad_id + 1))
    travelled = {}
    if start.kind in (RESUME, EXTEND):
        path = _repaired(start.checkpoint, run_dir, console)
        arrays, saved = ckpt.load_checkpoint(path)
        backend.load_state(travel.from_checkpoint(backend, arrays, saved, str(path)))
        _probed(travel.check_probe(saved.get("probe"), backend, probe_batch, path), console)
        state = TrainerState.from_json(saved, where=str(path / ckpt.TRAINER_STATE_FILE))
        if saved.get("backend") not in (None, name):
            travelled = {"from_backend": saved["backend"], "rng": "not restored (another backend)"}
            state.memory_watch = {}   # another backend measures memory another way: a new baseline
        state.wall_s_before = saved.get("wall_s", 0.0)
        state.last_ckpt = state.step   # the saved value predates this very checkpoint: do not write it again
        state.restarts += 1
        schedule, total = ScheduleSpec(**saved["schedule"]), saved["total_steps"]
        if start.kind == EXTEND:
            kind = cfg.training.schedule.kind
            total = start.extend_to
            schedule = extend(schedule, state.step, total, decay="linear" if kind == "linear" else "cosine")
            state.stopped = None   # extending is an explicit request to train on
            console.print(f"extending to {total} steps: lr decays from {schedule.start_lr:.3g} at step {state.step} "
                          f"to {schedule.min_lr:.3g} (strategy A)", markup=False)
        if state.dataset and state.dataset != _data_digest(data):
            console.print("warning: the training data changed since the checkpoint; the resume is not exact", markup=False)
        stream = BatchStream(data.train_plan)
        stream.restore(saved["data_position"])
        console.print(f"resumed from {path} at step {state.step} (restart {state.restarts})", markup=False)
    elif start.kind == INIT_FROM:
        backend.load_adapter_weights(travel.adapter_weights(backend, source.weights))
        _probed(travel.check_probe(source.probe, backend, probe_batch, start.init_from), console)
        travelled = {"from": str(start.init_from), "from_backend": source.from_backend}
        console.print(f"initialised the adapter from {start.init_from}; fresh schedule and optimizer (strategy B)",
                      markup=False)
    if stream is None and data.train_plan is not None:
        stream = BatchStream(data.train_plan)
    state.history = [*state.history, {"kind": start.kind, "step": state.step, "total_steps": total, "backend": name,
                                      **travelled, "at": round(time.time(), 3)}]
    state.backend, state.dataset = name, _data_digest(data)
    resumed = start.kind in (RESUME, EXTEND)
    tracker = open_tracker(cfg.raw, run_dir, resumed=resumed, resume_step=state.step) if world.is_main else None
    return Session(cfg, console, run_dir, backend, reason, data, stream, schedule, total, state, resumed, lock=lock,
                   base=base, probe_batch=probe_batch if cfg.kind != "control" else None,
                   tasks=TaskScoring(cfg, data, backend, model_dir), tracker=tracker)


def _probed(line: str | None, console: Console) -> None:
    if line:
        console.print(f"checked the loaded adapter: {line}", markup=False)


def _lora_settings(cfg: RunConfig) -> LoraSettings | None:
    """The adapter a run trains; none for a control run (its config has model.lora: null)."""
    lora = cfg.model.lora
    if cfg.kind == "control" or lora is None:
        return None
    return LoraSettings(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                        target_modules=tuple(lora.target_modules), layers=lora.layers)


def _repaired(source: Path, run_dir: Path, console: Console) -> Path:
    """This run's own checkpoints: repair leftovers of an interrupted save (find_latest_valid) before loading."""
    root = run_dir / "checkpoints"
    if source.parent.resolve() != root.resolve():
        return source
    repaired, warnings = ckpt.find_latest_valid(root)
    for w in warnings:
        console.print(f"warning: {w}", markup=False)
    return repaired if repaired is not None else source


def _data_parallel(cfg: RunConfig, world: dist.World, backend: str, console: Console) -> RunConfig:
    """Several ranks: grad_accum is per rank, so a step takes grad_accum × ranks micro-batches (rank r every r-th)."""
    if backend != "torch":
        raise UserError(f"data-parallel training ({world.size} ranks) needs the torch backend, not {backend}")
    if not world.is_main:
        console.quiet = True   # rank 0 reports
    t = cfg.training
    training = t.model_copy(update={"grad_accum": t.grad_accum * world.size})
    # The planner counted an epoch-based run's steps for one rank: recount with the global batch. (A test
    # stage's count is its max_steps, which the planner keeps below the full run's.)
    planned = cfg.raw.get("training", {}).get("total_steps")
    total = None if t.max_steps is None and cfg.total_steps == planned else cfg.total_steps
    console.print(f"data parallel: rank {world.rank} of {world.size}; {t.grad_accum} micro-batch(es) per rank, "
                  f"{training.grad_accum} per step", markup=False)
    return replace(cfg, training=training, total_steps=total)


def _schedule(cfg: RunConfig, total: int) -> ScheduleSpec | None:
    if cfg.kind == "control":
        return None
    s = cfg.training.schedule
    return ScheduleSpec(s.kind, cfg.training.lr, min(s.warmup_steps, max(0, total - 1)), total, s.min_lr_ratio, s.decay_fraction)


def _data_digest(data: PreparedData) -> str | None:
    split = next((r for r in data.dataset.splits if r.name == "train"), None)
    return split.sha256 if split else None


def _report_data(console: Console, data: PreparedData) -> None:
    for split in data.dataset.splits:
        console.print(f"data {split.name}: {split.n_examples} examples ({split.path})", markup=False)
    rep = data.train_report
    if rep is not None:
        console.print(f"tokenized train: {rep.n_sequences} sequences, p50/p90/max {rep.length_p50}/{rep.length_p90}/"
                      f"{rep.length_max} tokens, {rep.n_truncated} truncated; packing efficiency "
                      f"{data.train_plan.packing_efficiency(0):.1%}; {data.total_steps} steps ({data.steps_source})",
                      markup=False)
        for w in rep.warnings:
            console.print(f"warning: {w}", markup=False)


@staged("run")
def evaluate_control(s: Session) -> dict:
    """A control run: the base model's loss on the valid and test evaluation samples, no training."""
    results: dict = {}
    for split in ("valid", "test"):
        batches = s.data.eval_batches(split)
        if not batches:
            continue
        total = n = 0
        for b in batches:
            loss_sum, count = s.backend.eval_loss(b)
            total, n = total + loss_sum, n + count
        prefix, examples = ("val" if split == "valid" else "test"), len(s.data.eval_examples(split))
        results.update({f"{prefix}_loss": total / max(n, 1), f"{prefix}_tokens": n, f"{prefix}_examples": examples})
        s.console.print(f"control {split}: loss {total / max(n, 1):.4f} over {n} target tokens of {examples} examples",
                        markup=False)
    s.state.best_val_loss = results.get("val_loss")
    try:
        if s.tasks:
            results["eval"] = s.tasks.score_all(s.run_dir / "eval", "base model (control run)",
                                                say=lambda m: s.console.print(m, markup=False))
        if s.tracker is not None:   # the base model's numbers, at step 0
            s.tracker.write({"step": 0, "t": time.time(), **{k: v for k, v in results.items() if k != "eval"},
                             **score_lines(results.get("eval"))})
            s.tracker.close("completed")
        return s.write_summary("completed", "control run: base model evaluated", results)
    finally:
        s.close()
