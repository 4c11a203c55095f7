"""The run directory, written down once: where a run's files are, and readers that never raise.

    runs/<experiment>/
      jobs.json                   the SLURM jobs `specc submit` recorded (specc/slurm/state.py)
      logs/                       SLURM logs: <run>-<jobid>.out, <run>.test-<jobid>.out, <exp>-<jobid>_<index>.out
      report.md, plots/, time_accuracy.json                                             (specc report)
      <run>/                      one run
        config.json               the resolved trainer config (rewritten when a process starts)
        summary.json              "running" while a process trains, then the final summary
        metrics.jsonl             one JSON object per step, evaluation and event (each with its time "t")
        events/                   TensorBoard event files
        checkpoints/step_N/       checkpoints (manifest.json last)
        best/, adapter/           the best adapter, the final adapter
      <run>.test/                 its test stage: the same layout, plus gate.json (the gate's verdict)
      <run>.prev-<n>/             an earlier run moved aside by --resume never

Readers: a missing or invalid JSON file reads as None (and a JSON value that is not an object too);
a torn metrics line (a kill mid-write) is skipped, as is any line that is not a JSON object.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RUNS_ROOT = Path("runs")
CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
EVENTS = "events"
CHECKPOINTS = "checkpoints"
BEST = "best"
ADAPTER = "adapter"
GATE = "gate.json"
JOBS = "jobs.json"
LOGS = "logs"
PLOTS = "plots"
TEST_SUFFIX = ".test"
MOVED_ASIDE = ".prev-"

# summary.json's status: "running" until the process ends with one of these.
FINISHED = ("completed", "early_stopped")                        # it ran what was planned (or stopped early)
ENDED = FINISHED + ("diverged", "interrupted", "failed")


def read_json(path: Path) -> dict | None:
    """A JSON object from a file; None when the file is missing, unreadable, not JSON or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def iter_jsonl(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file, one by one; a torn or foreign line is skipped, a missing file is empty."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    yield value
    except (OSError, UnicodeDecodeError):
        return


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def mtime(path: Path) -> float | None:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None


def is_step_line(record: dict) -> bool:
    """A training step's metrics line (not an evaluation, not an event)."""
    return "loss" in record and "event" not in record


def _inside(name: str) -> property:
    """A RunDir property: the path of `name` in the run directory."""
    return property(lambda self: self.path / name, doc=f"<run>/{name}")


@dataclass(frozen=True)
class RunDir:
    """runs/<experiment>/<run>[.test]/ and its files."""
    path: Path

    @classmethod
    def of(cls, experiment: str, run: str, stage: str | None = None, root: Path = RUNS_ROOT) -> RunDir:
        """A run's directory; stage "test" is its test stage's."""
        return cls(Path(root) / experiment / (run + TEST_SUFFIX if stage == "test" else run))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def experiment_dir(self) -> Path:
        return self.path.parent

    @property
    def is_test_stage(self) -> bool:
        return self.name.endswith(TEST_SUFFIX)

    config_path = _inside(CONFIG)
    summary_path = _inside(SUMMARY)
    metrics_path = _inside(METRICS)
    events_dir = _inside(EVENTS)
    checkpoints_dir = _inside(CHECKPOINTS)
    best_dir = _inside(BEST)
    adapter_dir = _inside(ADAPTER)
    gate_path = _inside(GATE)

    @property
    def logs_dir(self) -> Path:
        return self.experiment_dir / LOGS

    def test_stage(self) -> RunDir:
        return self if self.is_test_stage else RunDir(self.path.with_name(self.name + TEST_SUFFIX))

    def config(self) -> dict | None:
        return read_json(self.config_path)

    def summary(self) -> dict | None:
        return read_json(self.summary_path)

    def records(self) -> list[dict]:
        """metrics.jsonl, torn lines skipped."""
        return read_jsonl(self.metrics_path)

    def iter_records(self) -> Iterator[dict]:
        return iter_jsonl(self.metrics_path)

    def checkpoints(self) -> list[dict]:
        """The checkpoints on disk, ascending: {"step", "dir", "backend" (that wrote it), "layout"
        ("canonical/1": any backend resumes it; null: only the one that wrote it)}."""
        found = []
        for d in sorted(self.checkpoints_dir.glob("step_*")) if self.checkpoints_dir.is_dir() else ():
            saved = read_json(d / "trainer_state.json")
            if d.is_dir() and d.name[len("step_"):].isdigit() and saved is not None:
                found.append({"step": saved.get("step"), "dir": f"{CHECKPOINTS}/{d.name}",
                              "backend": saved.get("backend"), "layout": saved.get("layout")})
        return found

    def has_run_files(self) -> bool:
        """A run started here: it has a config.json or a metrics.jsonl."""
        return self.config_path.is_file() or self.metrics_path.is_file()


def experiment_path(experiment: str, root: Path = RUNS_ROOT) -> Path:
    return Path(root) / experiment


def jobs_path(experiment: str, root: Path = RUNS_ROOT) -> Path:
    return experiment_path(experiment, root) / JOBS


def run_dirs(exp_dir: Path, include_test: bool = True) -> list[RunDir]:
    """The runs of an experiment directory (those with a config.json), name order; runs moved aside are left out."""
    return [RunDir(d) for d in sorted(Path(exp_dir).iterdir())
            if d.is_dir() and (d / CONFIG).is_file() and MOVED_ASIDE not in d.name
            and (include_test or not d.name.endswith(TEST_SUFFIX))]


def summarised_runs(root: Path = RUNS_ROOT) -> list[RunDir]:
    """Every runs/<experiment>/<dir>/ with a summary.json (test stages and moved-aside runs included),
    oldest summary first."""
    return [RunDir(p.parent) for p in sorted(Path(root).glob(f"*/*/{SUMMARY}"), key=lambda p: p.stat().st_mtime)]
