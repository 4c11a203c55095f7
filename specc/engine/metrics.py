"""Where a run's numbers go: metrics.jsonl (stable), TensorBoard event files, and the progress line."""
from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from pathlib import Path

from rich.console import Console

from specc.console import stderr_console


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int | None, tracker=None):
        self.path = run_dir / "metrics.jsonl"
        self.tracker = tracker     # specc.tracking.Tracker: MLflow / W&B, fed committed lines only
        if resume_step is not None:
            self._truncate_after(resume_step)   # lines past the checkpoint were trained again: keep no duplicates
        elif self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = _TensorBoard(run_dir / "events", resume_step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        """One line; "t" (unix time) is added, so a reader can tell a stalled or killed run from a slow one."""
        record = {**record, "t": round(time.time(), 3)}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        if any(clean[k] is None and record[k] is not None for k in record):
            clean["non_finite"] = [k for k in record if clean[k] is None and record[k] is not None]
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()
        if self.tracker is not None:
            self.tracker.write(clean)
        self._tb.scalars({_tb_tag(key): value for key, value in record.items()
                          if key not in ("step", "t") and isinstance(value, (int, float)) and not isinstance(value, bool)},
                         record.get("step", 0))

    def event(self, step: int, event: str, **details) -> None:
        self.write({"step": step, "event": event, **details})

    def close(self, status: str | None = None) -> None:
        self._fh.close()
        self._tb.close()
        if self.tracker is not None:
            self.tracker.close(status)


def _tb_tag(key: str) -> str:
    """TensorBoard's group for a metrics key: val/…, eval/<task>.<metric>, or train/…."""
    if key.startswith("val"):
        return "val/" + key
    return "eval/" + key.removeprefix("eval.") if key.startswith("eval") else "train/" + key


class NullLog:
    """What a data-parallel rank other than 0 logs to: nothing (rank 0 writes metrics.jsonl)."""

    def write(self, record: dict) -> None:
        pass

    def event(self, step: int, event: str, **details) -> None:
        pass

    def close(self, status: str | None = None) -> None:
        pass


class _TensorBoard:
    """Scalar event files through the tensorboard package alone (no torch or TensorFlow)."""

    def __init__(self, logdir: Path, resume_step: int | None):
        try:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            self._writer = None
            return
        logdir.mkdir(parents=True, exist_ok=True)
        self._Event, self._Summary = Event, Summary
        self._writer = EventFileWriter(str(logdir))
        if resume_step is not None:  # tells TensorBoard to drop points past the resumed step
            self._writer.add_event(Event(wall_time=time.time(), step=resume_step,
                                         session_log=SessionLog(status=SessionLog.START)))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One event per record, holding all its scalars (one per scalar cost a step's worth of protobufs)."""
        values = {tag: v for tag, v in values.items() if math.isfinite(v)}
        if self._writer is not None and values:
            summary = self._Summary(value=[self._Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
            self._writer.add_event(self._Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Progress:
    """The progress line: % done, loss and its 50-step average, ETA from recent steps, memory, checkpoint age.

    On a terminal it redraws one line; in a log (SLURM) it prints a line every `log_every` steps.
    """

    def __init__(self, total_steps: int, console: Console | None = None, log_every: int | None = None):
        self.console = console or stderr_console()
        self.total = total_steps
        self.log_every = log_every or max(1, total_steps // 50)
        self.step_times: deque[float] = deque(maxlen=50)
        self.live = self.console.is_terminal
        self._last_len = 0

    def step_time(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def eta_s(self, step: int) -> float | None:
        if not self.step_times:
            return None
        return (self.total - step) * (sum(self.step_times) / len(self.step_times))

    def update(self, step: int, loss: float, loss_avg: float | None, mem_mb: float, since_ckpt: int | None,
               mem_warning: str | None) -> None:
        """`since_ckpt`: steps since the last checkpoint, None while the run has none."""
        if not self.live and step % self.log_every and step != self.total:
            return
        eta = self.eta_s(step)
        eta_text = "—" if eta is None else (f"{eta / 3600:.2f}h" if eta >= 3600 else f"{eta / 60:.1f}m" if eta >= 60 else f"{eta:.0f}s")
        avg = "—" if loss_avg is None else f"{loss_avg:.4f}"
        line = (f"step {step}/{self.total} {100 * step / self.total:5.1f}% | loss {loss:.4f} | avg50 {avg} | "
                f"eta {eta_text} | {'no ckpt yet' if since_ckpt is None else f'ckpt -{since_ckpt}'} | mem {mem_mb:.0f}MB" + (" ⚠" if mem_warning else ""))
        if self.live:
            self.console.file.write("\r" + line.ljust(self._last_len))
            self.console.file.flush()
            self._last_len = len(line)
        else:
            self.console.print(line, markup=False, highlight=False)   # no regex pass over every line

    def message(self, text: str) -> None:
        if self.live and self._last_len:
            self.console.file.write("\n")
            self._last_len = 0
        self.console.print(text, markup=False)

    def close(self) -> None:
        if self.live and self._last_len:
            self.console.file.write("\n")
            self.console.file.flush()
