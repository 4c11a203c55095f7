"""The training loop. `train()` reads top to bottom; everything it calls is a small, named piece."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from specc.engine import checkpoint as ckpt
from specc.engine import distributed as dist
from specc.engine.faults import fault_point
from specc.engine.metrics import MetricsLog, NullLog, Progress
from specc.engine.policies import EarlyStopper, MemoryWatch, MovingAverage, Stop, non_finite
from specc.engine.session import Session
from specc.engine.signals import SignalGuard
from specc.engine.tasks import score_after_training, score_in_training, score_lines
from specc.errors import EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, staged
from specc.plan.schedule import lr as lr_at

EXIT_CODES = {"completed": EXIT_OK, "early_stopped": EXIT_OK, "diverged": EXIT_DIVERGED,
              "interrupted": EXIT_INTERRUPTED, "failed": EXIT_FAILED}


@dataclass(frozen=True)
class RunOptions:
    backend: str | None = None          # overrides the spec's backend
    resume: str = "auto"                # "auto" | "never" | a checkpoint or run directory
    extend_steps: int | None = None     # strategy A: resume and extend to this many steps
    init_from: Path | None = None       # strategy B: fresh schedule from these adapter weights
    stage: str | None = None            # "test": the short gating run


@staged("run")
def train(s: Session) -> dict:
    """Run optimizer steps until the schedule ends, a policy stops the run, or a signal asks us to."""
    cfg, backend, state = s.cfg, s.backend, s.state
    accum = cfg.training.grad_accum              # micro-batches per step, over all ranks
    world = dist.world()                         # one process: rank 0 of 1, and every dist call is a no-op
    stopper = EarlyStopper(cfg.training.early_stopping)
    stopper.restore(state.early_stopping)
    loss_avg = MovingAverage(50)
    loss_avg.restore(state.loss_window)
    memory = MemoryWatch()
    memory.restore(state.memory_watch)
    progress = Progress(s.total_steps, s.console)
    metrics = MetricsLog(s.run_dir, resume_step=state.step if s.resumed else None, tracker=s.tracker) \
        if world.is_main else NullLog()
    stop: Stop | None = None
    start = state.history[-1]
    if start["kind"] != "fresh":   # plots and watch mark where a run was resumed, extended or re-initialised
        metrics.event(state.step, {"resume": "resumed", "extend": "extended", "init_from": "init_from"}[start["kind"]],
                      restart=state.restarts, total_steps=s.total_steps, backend=start["backend"])
    s.write_running()
    with SignalGuard() as signals:
        try:
            if state.step == 0 and state.best_val_loss is None:
                evaluate(s, metrics, progress)                                   # the base model's val loss
            while state.step < s.total_steps and not state.stopped:             # a stopped run stays stopped
                t0 = time.perf_counter()
                lr = lr_at(s.schedule, state.step)
                batches = [next(s.stream) for _ in range(accum)]
                n_targets = sum(b.n_target_tokens for b in batches) or 1
                loss_sum = 0
                for i, b in enumerate(batches[world.rank::world.size]):          # this rank's share
                    if i:
                        fault_point("micro", state.step + 1)                  # crash tests only
                    loss_sum += backend.forward_backward(b, 1.0 / n_targets)[0]
                # Every rank sees the step's whole loss, and whether any rank was asked to stop.
                loss_sum, signalled = dist.all_reduce_sum([loss_sum, float(signals.received is not None)])
                loss = loss_sum / n_targets
                if non_finite(loss):                                             # stop before the update
                    backend.zero_grad()
                    stop = Stop("diverged", f"loss is {loss} at step {state.step + 1}; the update was not applied")
                    break
                result = backend.optimizer_step(lr)
                if not result.applied:
                    stop = Stop("diverged", f"gradient norm is {result.grad_norm} at step {state.step + 1}; "
                                            "the update was not applied")
                    break
                state.step += 1
                tokens = sum(b.n_tokens for b in batches)
                state.tokens += tokens
                loss_avg.add(loss)
                step_s = time.perf_counter() - t0
                state.train_s += step_s
                progress.step_time(step_s)
                mem = backend.memory()
                metrics.write({"step": state.step, "loss": loss, "lr": lr, "grad_norm": result.grad_norm,
                               "tokens": tokens, "step_s": step_s, "mem_mb": mem.current_mb,
                               **getattr(mem, "gauges", {})})   # gpu_util, gpu_mem_mb on CUDA (backends/torch_gpu.py)
                fault_point("step", state.step)
                warning = memory.check(state.step, mem.current_mb)
                if warning and memory.first_warning():
                    progress.message(f"warning: {warning}")
                progress.update(state.step, loss, loss_avg.value, mem.current_mb,
                                state.step - state.last_ckpt if state.last_ckpt else None, warning)
                if state.step % cfg.training.eval_every == 0 or state.step == s.total_steps:
                    evaluate(s, metrics, progress)
                score_in_training(s, metrics, progress)                          # tasks with `every`
                stop = stopper.after_step(state.step, loss_avg.value, result.grad_norm)
                state.early_stopping, state.loss_window, state.memory_watch = \
                    stopper.state(), loss_avg.state(), memory.state()
                if stop:
                    state.stopped = {"status": stop.status, "reason": stop.reason}
                # Several ranks stop together, on what they agreed on when summing the loss.
                interrupt = signals.received if not world.active else \
                    (signals.received or "a signal to another rank") if signalled else None
                if stop or interrupt or state.step % cfg.training.checkpoint_every == 0:
                    save(s, metrics, progress)
                if stop:
                    break
                if interrupt and state.step < s.total_steps:   # on the last step: just finish
                    stop = Stop("interrupted", f"{interrupt} received; checkpointed at step {state.step}")
                    break
        except BaseException:
            s.close(failed=True)   # a failed run frees its directory (and ends its tracker's run) too
            raise
        finally:
            progress.close()
    if stop is None and state.stopped:
        stop = Stop(**state.stopped)
    try:
        return finish(s, metrics, progress, stop)
    finally:
        s.close()


def evaluate(s: Session, metrics: MetricsLog, progress: Progress) -> float | None:
    """Validation loss over the fixed evaluation sample (training.eval_examples); a new best publishes best/."""
    batches = s.data.eval_batches("valid")
    if not batches:
        return None
    total = n = 0
    world = dist.world()
    for b in batches[world.rank::world.size]:
        loss_sum, count = s.backend.eval_loss(b)
        total, n = total + loss_sum, n + count
    total, n = dist.all_reduce_sum([total, n])
    n = int(n)
    val = total / max(n, 1)
    state = s.state
    metrics.write({"step": state.step, "val_loss": val, "val_tokens": n,
                   "val_examples": len(s.data.eval_examples("valid"))})
    if state.best_val_loss is None or val < state.best_val_loss:
        state.best_val_loss = val
        if not s.tasks.selects_best:               # else a task metric decides best/ (tasks.score_in_training)
            state.best_step = state.step
            s.publish_best(val_loss=val)
    progress.message(f"eval step {state.step}: val_loss {val:.4f} (best {state.best_val_loss:.4f}"
                     + (f" at step {state.best_step})" if not s.tasks.selects_best else ")"))
    return val


def save(s: Session, metrics: MetricsLog, progress: Progress) -> None:
    """Write a checkpoint (the protocol in checkpoint.py) and record how long it took."""
    t0 = time.perf_counter()
    step = s.state.step
    # Data-parallel ranks hold identical weights: rank 0 writes once every rank has finished the step,
    # and no rank goes on (or exits) before the checkpoint is committed.
    dist.barrier()
    main = dist.world().is_main
    if main:
        arrays, trainer_state = s.checkpoint()
        path = ckpt.write_checkpoint(s.run_dir / "checkpoints", step, arrays, trainer_state,
                                     write_extra=lambda d: (s.export(d / "adapter"), fault_point("save", step)),
                                     keep_last=s.cfg.training.keep_last,
                                     protect={s.state.best_step} if s.state.best_step else ())
    seconds = time.perf_counter() - t0
    dist.barrier()
    s.state.last_ckpt = step
    s.state.ckpt_s = seconds
    if main:
        metrics.event(step, "checkpoint", path=path.name, seconds=round(seconds, 4), backend=s.backend.name)


def finish(s: Session, metrics: MetricsLog, progress: Progress, stop: Stop | None) -> dict:
    """Final export, summary.json, and the status that decides the exit code."""
    state = s.state
    status, reason = (stop.status, stop.reason) if stop else ("completed", f"reached {s.total_steps} steps")
    if status in ("completed", "early_stopped"):
        if state.last_ckpt != state.step:
            save(s, metrics, progress)
        if dist.world().is_main:
            ckpt.write_tree_atomic(s.run_dir / "adapter",
                                   lambda d: (s.export(d, with_state=True), fault_point("final", state.step)))
        dist.barrier()
    results = score_after_training(s) if status in ("completed", "early_stopped") else {}
    if results.get("eval"):    # the final task scores as a metrics line too (TensorBoard, trackers)
        metrics.write({"step": state.step, **score_lines(results["eval"]), "final": True})
    metrics.event(state.step, status, reason=reason)
    metrics.close(status)
    summary = s.write_summary(status, reason, results)
    s.console.print(f"{status}: {reason}", markup=False)
    return summary
