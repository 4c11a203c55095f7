"""runs/<experiment>/jobs.json: which SLURM jobs run what, so status and cancel can find them.

    {"experiment": "quickstart",
     "runs": {"main": [{"job_id": "41", "stage": "test", "submitted_at": "2026-...Z", "cluster": "local",
                        "partition": "debug", "script": "generated/quickstart/main/test.sbatch",
                        "log": "runs/quickstart/logs/main.test-41.out"},
                       {"job_id": "42", "stage": "full", "depends_on": "41", ...}]}}

A sweep's tasks are recorded per run as "<array id>_<index>" with "array_job_id". Records are
only appended: the last record of a (run, stage) is the current one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path


@dataclass
class JobRecord:
    job_id: str
    stage: str                      # "test" | "full"
    submitted_at: str
    partition: str
    script: str
    cluster: str = ""
    qos: str | None = None
    log: str | None = None
    array_job_id: str | None = None
    depends_on: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "JobRecord":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Jobs:
    experiment: str
    runs: dict[str, list[JobRecord]] = field(default_factory=dict)

    def add(self, run: str, record: JobRecord) -> None:
        self.runs.setdefault(run, []).append(record)

    def latest(self, run: str, stage: str) -> JobRecord | None:
        recs = [r for r in self.runs.get(run, []) if r.stage == stage]
        return recs[-1] if recs else None

    def to_dict(self) -> dict:
        return {"experiment": self.experiment,
                "runs": {run: [{k: v for k, v in asdict(r).items() if v is not None} for r in recs]
                         for run, recs in self.runs.items()}}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def jobs_path(experiment: str, root: Path = Path("runs")) -> Path:
    return root / experiment / "jobs.json"


def load_jobs(experiment: str, root: Path = Path("runs")) -> Jobs:
    path = jobs_path(experiment, root)
    if not path.is_file():
        return Jobs(experiment)
    data = json.loads(path.read_text(encoding="utf-8"))
    return Jobs(data.get("experiment", experiment),
                {run: [JobRecord.from_dict(r) for r in recs] for run, recs in (data.get("runs") or {}).items()})


def save_jobs(jobs: Jobs, root: Path = Path("runs")) -> Path:
    path = jobs_path(jobs.experiment, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(jobs.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def known_experiments(root: Path = Path("runs")) -> list[str]:
    return sorted(p.parent.name for p in root.glob("*/jobs.json")) if root.is_dir() else []
