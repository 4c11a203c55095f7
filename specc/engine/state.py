"""TrainerState: everything the loop carries from step to step, and what a resume restores.

It is written into every checkpoint as trainer_state.json (with the data position, schedule, total
steps and wall time the session adds) and read back by `from_json`, which fills defaults for fields
an older specc did not write and refuses fields it does not know, so a typo fails loudly instead of
being silently dropped. The policies keep their own state (`EarlyStopper.state()`,
`MovingAverage.state()`, `MemoryWatch.state()`); it is stored here under their names.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from specc.errors import UserError

STATE_VERSION = 1
# What the session adds to the state in a checkpoint (and reads back itself).
SAVED_BY_SESSION = ("data_position", "schedule", "total_steps", "wall_s",
                    "layout", "base", "lora", "probe")   # what the arrays are and fit (specc/engine/travel.py)
# Keys an older specc wrote that mean nothing now.
RETIRED = ("micro_step", "mem_warned", "peak_mem_mb", "format_version")


@dataclass
class TrainerState:
    step: int = 0                               # optimizer steps done
    tokens: int = 0                             # non-padding tokens trained on
    train_s: float = 0.0                        # seconds inside training steps
    wall_s_before: float = 0.0                  # wall time of earlier attempts (a resume adds its own)
    last_ckpt: int = 0                          # step of the newest checkpoint, 0 before the first
    ckpt_s: float | None = None                 # how long the last checkpoint took
    best_val_loss: float | None = None
    best_step: int | None = None                # the step best/ holds (by val_loss, or by evaluation.select_best_by)
    best_score: float | None = None             # select_best_by a task metric: its best score so far
    loss_window: list[float] = field(default_factory=list)    # MovingAverage.state()
    early_stopping: dict = field(default_factory=dict)        # EarlyStopper.state()
    memory_watch: dict = field(default_factory=dict)          # MemoryWatch.state()
    stopped: dict | None = None                 # {"status", "reason"}: an early-stopped run stays stopped
    restarts: int = 0
    data_seed: int = 0
    backend: str | None = None                  # the backend that wrote the state
    dataset: str | None = None                  # sha256 of the train split
    history: list[dict] = field(default_factory=list)        # one entry per start: fresh/resume/extend/init_from
    format: int = STATE_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict, where: str = "trainer_state.json") -> "TrainerState":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - known - set(SAVED_BY_SESSION) - set(RETIRED))
        if unknown:
            raise UserError(f"{where} has fields this specc does not know: {', '.join(unknown)}",
                            hint="it was written by a newer specc (upgrade), or edited by hand (restore it)")
        state = cls(**{k: v for k, v in saved.items() if k in known})
        if saved.get("mem_warned") and not state.memory_watch:
            state.memory_watch = {"warned": True}
        return state
