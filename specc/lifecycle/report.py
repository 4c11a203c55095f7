"""`specc report EXPERIMENT`: what the runs measured, judged against the hypothesis, and what to do next.

Reads runs/<experiment>/<run>/{config.json, summary.json, metrics.jsonl} (rundata.py), finds the
baseline experiment's runs in runs/<baseline>/, judges each expected outcome (verdict.py), compares
estimated with actual wall time (accuracy.py), says what the metrics show and what to do next
(advice.py), draws the plots (plots.py); report_markdown.py writes runs/<experiment>/report.md.

Reporting writes under runs/ only (plots/, time_accuracy.json, report.md): the calibrations that
`specc compile` reads change solely through `specc calibrate --from-runs EXPERIMENT`, which folds
these accuracies in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from specc.errors import UserError
from specc.lifecycle.accuracy import (
    Accuracy,
    accuracy_document,
    accuracy_problem,
    time_accuracy,
    write_accuracy,
)
from specc.lifecycle.advice import Trends, next_steps, observations, trends
from specc.lifecycle.rundata import (
    RunData,
    baseline_experiment,
    baseline_run,
    find_experiment_dir,
    load_experiment,
)
from specc.lifecycle.verdict import Verdict, judge, overall
from specc.rundir import PLOTS, RUNS_ROOT


@dataclass
class RunReport:
    run: RunData
    verdicts: list[Verdict]
    trends: Trends
    accuracy: Accuracy | None
    notes: list[str] = field(default_factory=list)
    accuracy_note: str = ""          # why the run's time was not compared with its estimate
    usage: object | None = None      # used against asked on SLURM (slurm/usage.py), for submitted runs


@dataclass
class ExperimentReport:
    experiment: str
    dir: Path
    runs: list[RunReport]
    baseline: str | None
    baseline_runs: list[RunData]
    overall: str
    next_steps: list[str]
    plots: list[Path] = field(default_factory=list)
    accuracy_file: Path | None = None     # runs/<experiment>/time_accuracy.json

    def sorted_runs(self, key: str | None, descending: bool = False) -> list[RunReport]:
        if not key:
            return list(self.runs)
        if key == "name":
            return sorted(self.runs, key=lambda r: r.run.name, reverse=descending)
        if key == "status":
            return sorted(self.runs, key=lambda r: r.run.status, reverse=descending)
        present = [r for r in self.runs if r.run.metric(key) is not None]
        missing = [r for r in self.runs if r.run.metric(key) is None]
        return sorted(present, key=lambda r: r.run.metric(key), reverse=descending) + missing


def control_run(runs: list[RunData], run: RunData) -> RunData | None:
    """The experiment's control run of the same base model (an untrained base, scored on the same tasks)."""
    path = (run.config.get("model") or {}).get("path")
    return next((c for c in runs if c.kind == "control" and (c.config.get("model") or {}).get("path") == path), None)


def build_report(target: str | Path, *, runs_root: Path = RUNS_ROOT, baseline: str | None = None,
                 record_accuracy: bool = True, plots: bool = True, calibrations_dir=None,
                 include_test: bool = False) -> ExperimentReport:
    """Judge, compare and plot an experiment's runs. Writes under its runs/ directory only (plots/,
    time_accuracy.json); `calibrations_dir` is read, for estimates of runs that recorded none."""
    exp_dir = find_experiment_dir(target, runs_root)
    runs = load_experiment(exp_dir, include_test)
    if not runs:
        raise UserError(f"{exp_dir} holds no run (no */config.json)", hint="run the experiment first: `specc run SPEC`")
    experiment = runs[0].experiment
    base_name = baseline or next((b for b in (baseline_experiment(r.config) for r in runs) if b), None)
    base_runs = load_experiment(runs_root / base_name) if base_name and (runs_root / base_name).is_dir() else []
    reports = []
    for run in runs:
        expected = ((run.config.get("hypothesis") or {}).get("expected") or []) if run.kind == "train" else []
        b = baseline_run(base_runs, run.name) if base_runs else None
        c = control_run(runs, run)
        verdicts = [judge(e, run.summary, run.records, b.summary if b else None, b.records if b else None,
                          base_name, c.summary if c else None, c.name if c else None) for e in expected]
        acc = time_accuracy(run, calibrations_dir)
        note = (accuracy_problem(run) or "no estimate was recorded and none can be made now") if acc is None else ""
        reports.append(RunReport(run, verdicts, trends(run.records), acc, accuracy_note=note))
    _attach_usage(exp_dir, reports)
    for r in reports:
        r.notes = observations(r.run, r.trends, r.accuracy)
    verdict = overall([v for r in reports for v in r.verdicts])
    report = ExperimentReport(experiment, exp_dir, reports, base_name, base_runs, verdict, [], [])
    report.next_steps = next_steps(report)
    if record_accuracy:
        report.accuracy_file = write_accuracy(exp_dir, accuracy_document(experiment, reports))
    if plots:
        from specc.lifecycle.plots import plot_experiment

        from specc.lifecycle.report_tasks import plot_task_metrics

        report.plots = plot_experiment([r.run for r in reports], exp_dir / PLOTS, experiment)
        report.plots += plot_task_metrics([r.run for r in reports], exp_dir / PLOTS, experiment)
    return report


def _attach_usage(exp_dir: Path, reports: list[RunReport]) -> None:
    """Used against asked for the runs `specc submit` recorded (runs/<exp>/jobs.json)."""
    from specc.rundir import JOBS, TEST_SUFFIX
    from specc.slurm.state import load_jobs
    from specc.slurm.usage import run_usage

    if not (exp_dir / JOBS).is_file():
        return
    jobs = load_jobs(exp_dir.name, exp_dir.parent)
    for r in reports:
        test = r.run.name.endswith(TEST_SUFFIX)
        name = r.run.name.removesuffix(TEST_SUFFIX) if test else r.run.name
        if name in jobs.runs:
            r.usage = run_usage(exp_dir.name, name, "test" if test else "full", jobs, exp_dir.parent)


def publish_to_trackers(rep: ExperimentReport, report_path: Path) -> list[str]:
    """The verdicts, the estimate accuracy, report.md and the plots, on each run's tracker runs (MLflow, W&B):
    lines saying what was logged, and warnings for what could not be (a tracker that is down stops nothing)."""
    from specc.tracking import log_report

    lines = []
    for r in rep.runs:
        if not (r.run.config.get("tracking") or {}):
            continue
        tags = {"specc.hypothesis.overall": rep.overall}
        for i, v in enumerate(r.verdicts):
            tags[f"specc.verdict.{i}"] = f"{v.verdict}: {v.expectation} ({v.reason})"
        metrics = {}
        if r.accuracy is not None:
            metrics.update(time_accuracy=r.accuracy.time_accuracy, estimated_wall_s=r.accuracy.estimated_s,
                           actual_wall_s=r.accuracy.actual_s)
        if r.usage is not None and r.usage.ratio is not None:
            metrics.update(slurm_used_s=r.usage.used_s, slurm_asked_s=r.usage.asked_s, slurm_used_ratio=r.usage.ratio)
        problems = log_report(r.run.dir, r.run.config, tags, metrics, [report_path, *rep.plots])
        which = ", ".join(k for k, v in (r.run.config.get("tracking") or {}).items() if v)
        lines += [f"warning: {r.run.name}: the report did not reach {p}" for p in problems] or \
                 [f"logged {len(r.verdicts)} verdict(s), {len(metrics)} figure(s) and {1 + len(rep.plots)} file(s) of "
                  f"{r.run.name} to {which}"]
    return lines
