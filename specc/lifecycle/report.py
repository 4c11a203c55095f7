"""`specc report EXPERIMENT`: what the runs measured, judged against the hypothesis, and what to do next.

Reads runs/<experiment>/<run>/{config.json, summary.json, metrics.jsonl}, finds the baseline
experiment's runs in runs/<baseline>/, judges each expected outcome (verdict.py), compares estimated
with actual wall time (time_accuracy = estimated / actual, as the seeds report it), draws the plots and
writes runs/<experiment>/report.md and runs/<experiment>/time_accuracy.json.

Reporting writes under runs/ only: the calibrations that `specc compile` reads change solely through
`specc calibrate --from-runs EXPERIMENT`, which folds these accuracies in. Only runs that completed or
early-stopped without an extension are compared (estimate.measurement_problem): an interrupted,
failed or extended run did not run what was estimated.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from specc.errors import UserError
from specc.lifecycle.estimate import fmt_duration, measurement_problem
from specc.lifecycle.verdict import CONFIRMED, INCONCLUSIVE, REJECTED, Verdict, judge, metric_value, overall

# The report's table. `wall` is summary.json's wall_s, shown as a duration (the expectation metric
# wall_hours stays in hours); `validated on` is the size of each evaluation (metrics.jsonl eval lines).
COLUMNS = ("status", "steps", "best_val_loss", "final_loss", "tokens_per_s", "wall", "peak_mem_gb", "validated on")
ACCURACY_FILE = "time_accuracy.json"


def read_jsonl(path: Path) -> list[dict]:
    """metrics.jsonl lines; a torn last line (a kill mid-write) is skipped."""
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class RunData:
    experiment: str
    name: str
    dir: Path
    config: dict
    summary: dict | None
    records: list[dict]

    @property
    def stage(self) -> str | None:
        return "test" if self.name.endswith(".test") else None

    @property
    def kind(self) -> str:
        return (self.summary or {}).get("kind") or self.config.get("kind", "train")

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status") or "running or killed"

    def metric(self, name: str) -> float | None:
        if name in ("status",):
            return None
        if name == "wall":
            return metric_value(self.summary, "wall_s", self.records)
        if name == "validated on":
            return eval_size(self.records)[1]
        if name == "steps":
            s = (self.summary or {}).get("steps") if self.status != "running" else None   # running: its start step
            return float(s) if s is not None else float(max((r.get("step", 0) for r in self.records), default=0))
        return metric_value(self.summary, name, self.records)


def load_run(run_dir: Path) -> RunData | None:
    config = read_json(run_dir / "config.json")
    if config is None:
        return None
    return RunData(config.get("experiment", run_dir.parent.name), run_dir.name, run_dir, config,
                   read_json(run_dir / "summary.json"), read_jsonl(run_dir / "metrics.jsonl"))


def experiment_dir(target: str | Path, runs_root: Path = Path("runs")) -> Path:
    p = Path(target)
    if p.is_dir() and any(p.glob("*/config.json")):
        return p
    if (runs_root / str(target)).is_dir():
        return runs_root / str(target)
    known = sorted(d.name for d in runs_root.iterdir() if d.is_dir()) if runs_root.is_dir() else []
    raise UserError(f"no runs for experiment {target!r} under {runs_root}/",
                    hint=("experiments with runs: " + ", ".join(known)) if known else
                    "run it first: `specc run SPEC` (or submit it), then report")


def natural_key(name: str) -> list:
    """r4 < r16 < r128: numbers inside names sort as numbers."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_experiment(exp_dir: Path, include_test: bool = False) -> list[RunData]:
    runs = []
    for d in sorted((p for p in exp_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        if ".prev-" in d.name or d.name in ("logs", "plots") or (d.name.endswith(".test") and not include_test):
            continue
        run = load_run(d)
        if run is not None:
            runs.append(run)
    return runs


# --- baseline ------------------------------------------------------------------------------------------

def baseline_experiment(config: dict) -> str | None:
    """The baseline experiment's name, from the spec the run was compiled from (config.json's source)."""
    source = config.get("baseline")
    if isinstance(source, str) and source:
        return source
    spec_path = config.get("source")
    if not spec_path or not Path(spec_path).is_file():
        return None
    from specc.errors import SpecError
    from specc.plan.baseline import find_baseline_spec
    from specc.spec.validate import load_spec

    try:
        ref = load_spec(Path(spec_path)).spec.baseline
        if not ref:
            return None
        path = find_baseline_spec(ref, Path(spec_path))
        return load_spec(path).spec.experiment if path else ref
    except (SpecError, OSError):
        return None


def baseline_run(runs: list[RunData], name: str) -> RunData | None:
    """The baseline's run of the same name, else its `main` run, else its only training run."""
    by_name = {r.name: r for r in runs}
    if name in by_name:
        return by_name[name]
    if "main" in by_name:
        return by_name["main"]
    train = [r for r in runs if r.kind == "train"]
    return train[0] if len(train) == 1 else None


# --- estimated vs actual -------------------------------------------------------------------------------

@dataclass
class Accuracy:
    source: str
    source_text: str
    estimated_s: float
    actual_s: float
    raw_estimated_s: float
    shape_key: str
    device_key: str
    when: str            # "made before the run" | "now (no estimate was recorded with the run)" (+ pro-rating)
    calibrated_at: str = ""

    @property
    def time_accuracy(self) -> float:
        return self.estimated_s / self.actual_s

    @property
    def raw_time_accuracy(self) -> float:
        """Before the correction the estimate applied: what corrects the next estimate."""
        return self.raw_estimated_s / self.actual_s


def accuracy_problem(run: RunData) -> str | None:
    """Why this run's wall time cannot be compared with its estimate, or None."""
    if run.kind != "train":
        return f"a {run.kind} run"
    problem = measurement_problem(run.summary, run.config)
    if problem is None and not (run.summary or {}).get("wall_s"):
        problem = "summary.json has no wall_s"
    return problem


def _recorded_or_now(run: RunData, calibrations_dir) -> tuple[dict, str] | None:
    s = run.summary or {}
    est = s.get("estimate") or run.config.get("estimate") or {}
    if est.get("wall_s"):
        return est, "made before the run"
    from specc.lifecycle.calibrations import load_calibration
    from specc.lifecycle.estimate import estimate_run
    from specc.lifecycle.shape import device_key

    try:
        cal = load_calibration(device_key(run.config["resources"]), calibrations_dir)
        e = estimate_run(run.config, calibration=cal)
    except (KeyError, TypeError, ValueError):
        return None
    if e.wall_s is None:
        return None
    return e.to_config(), "now (no estimate was recorded with the run)"


def time_accuracy(run: RunData, calibrations_dir=None) -> Accuracy | None:
    """Estimated / actual wall time of a run that ran as planned (accuracy_problem is None).

    When the run did another number of steps than estimated (early stopping), the estimate is pro-rated
    to the steps done, and `when` says so."""
    if accuracy_problem(run) is not None:
        return None
    found = _recorded_or_now(run, calibrations_dir)
    if found is None:
        return None
    est, when = found
    s = run.summary or {}
    share, planned, done = 1.0, est.get("steps"), s.get("steps")
    if planned and done and int(planned) != int(done):
        share = int(done) / int(planned)
        when += f"; pro-rated to the {int(done):,} of {int(planned):,} estimated steps it ran ({s.get('status')})"
    wall = float(est["wall_s"])
    return Accuracy(est["source"], est.get("source_text", ""), wall * share, float(s["wall_s"]),
                    float(est.get("raw_wall_s") or wall) * share, est.get("shape_key", ""), est.get("device_key", ""),
                    when, str(est.get("calibrated_at") or ""))


def calibration_record(run: RunData, acc: Accuracy) -> dict:
    """What `specc calibrate --from-runs` files under the calibration's accuracy records."""
    return {"run": f"{run.experiment}/{run.name}", "source": acc.source, "estimated_s": acc.raw_estimated_s,
            "actual_s": acc.actual_s, "time_accuracy": acc.raw_time_accuracy,
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def accuracy_document(experiment: str, reports: list) -> dict:
    """runs/<experiment>/time_accuracy.json: each compared run, and why the others were not compared."""
    compared, skipped = [], []
    for r in reports:
        run, acc = r.run, r.accuracy
        name = f"{run.experiment}/{run.name}"
        if acc is not None:
            compared.append({"run": name, "source": acc.source, "source_text": acc.source_text, "when": acc.when,
                             "shape_key": acc.shape_key, "device_key": acc.device_key, "estimated_s": acc.estimated_s,
                             "raw_estimated_s": acc.raw_estimated_s, "actual_s": acc.actual_s,
                             "time_accuracy": acc.time_accuracy, "raw_time_accuracy": acc.raw_time_accuracy,
                             **({"calibrated_at": acc.calibrated_at} if acc.calibrated_at else {})})
        elif run.kind == "train":
            skipped.append({"run": name, "reason": r.accuracy_note or "no estimate to compare"})
    return {"experiment": experiment, "written_by": "specc report",
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fold_into_calibrations": f"specc calibrate --from-runs {experiment}",
            "compared": compared, "not_compared": skipped}


def write_accuracy(exp_dir: Path, document: dict) -> Path:
    path = exp_dir / ACCURACY_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# --- observations --------------------------------------------------------------------------------------

@dataclass
class Trends:
    first_loss: float | None = None
    final_loss: float | None = None
    end_slope: float | None = None          # relative change of the loss average over the last quarter
    val_first: float | None = None
    val_best: float | None = None
    val_best_step: int | None = None
    val_last: float | None = None
    throughput_change: float | None = None  # last fifth vs first fifth (after warm-up), relative
    step_cv: float | None = None
    mem_growth: float | None = None
    n_steps: int = 0


def eval_size(records: list[dict]) -> tuple[int | None, int | None]:
    """(validation examples, validation tokens) of the latest evaluation; None where not recorded."""
    for r in reversed(records):
        if isinstance(r.get("val_loss"), (int, float)) or "val_tokens" in r:
            ex, tok = r.get("val_examples"), r.get("val_tokens")
            return (int(ex) if isinstance(ex, (int, float)) else None, int(tok) if isinstance(tok, (int, float)) else None)
    return None, None


def eval_size_text(records: list[dict]) -> str | None:
    """'12 examples, 1,234 target tokens', from metrics.jsonl's latest evaluation."""
    ex, tok = eval_size(records)
    parts = ([f"{ex:,} example{'s' if ex != 1 else ''}"] if ex is not None else []) + \
            ([f"{tok:,} target tokens"] if tok is not None else [])
    return ", ".join(parts) or None


def trends(records: list[dict]) -> Trends:
    steps = [r for r in records if isinstance(r.get("loss"), (int, float))]
    vals = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), (int, float))]
    t = Trends(n_steps=len(steps))
    if steps:
        losses = [r["loss"] for r in steps]
        k = max(1, min(50, len(losses) // 10))
        t.first_loss, t.final_loss = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
        if len(losses) >= 8:
            q = len(losses) // 4
            a, b = statistics.fmean(losses[-q - k:-q] or losses[:k]), t.final_loss
            t.end_slope = (b - a) / a if a else None
    if vals:
        t.val_first, t.val_last = vals[0][1], vals[-1][1]
        t.val_best_step, t.val_best = min(vals, key=lambda v: v[1])
    timed = [r for r in steps if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0]
    if len(timed) >= 10:
        body = timed[3:]
        n = max(2, len(body) // 5)

        def rate(rs):
            return sum(r.get("tokens", 0) for r in rs) / sum(r["step_s"] for r in rs)

        first, last = rate(body[:n]), rate(body[-n:])
        t.throughput_change = (last - first) / first if first else None
        secs = [r["step_s"] for r in body]
        t.step_cv = statistics.pstdev(secs) / statistics.fmean(secs)
        mem = [r["mem_mb"] for r in body if isinstance(r.get("mem_mb"), (int, float)) and r["mem_mb"] > 0]
        if len(mem) >= 10:
            m0, m1 = statistics.fmean(mem[:n]), statistics.fmean(mem[-n:])
            t.mem_growth = (m1 - m0) / m0 if m0 else None
    return t


def observations(run: RunData, tr: Trends, acc: Accuracy | None) -> list[str]:
    s = run.summary or {}
    out = []
    if not s:
        out.append(f"`{run.name}` has no summary.json: it is still running or was killed (see `specc watch {run.dir}`).")
    elif s.get("status") == "running":
        out.append(f"`{run.name}` has not ended: its summary.json says running (from step {s.get('steps')} of "
                   f"{s.get('total_steps')}); `specc watch {run.dir}` tells whether its process is alive.")
    elif s.get("status") != "completed":
        reason = s.get("stop_reason")
        out.append(f"`{run.name}` ended **{s.get('status')}** at step {s.get('steps')}/{s.get('total_steps')}"
                   + (f": {reason}." if reason else "."))
    if tr.first_loss is not None and tr.final_loss is not None and tr.first_loss > 0:
        out.append(f"`{run.name}`: train loss {tr.first_loss:.3f} → {tr.final_loss:.3f} "
                   f"({100 * (tr.final_loss - tr.first_loss) / tr.first_loss:+.0f}%) over {tr.n_steps} steps"
                   + (f"; {_trend_words(tr.end_slope)} over the last quarter ({100 * tr.end_slope:+.1f}%)."
                      if tr.end_slope is not None else "."))
    if tr.val_best is not None:
        size = eval_size_text(run.records)
        text = (f"`{run.name}`: validation loss {tr.val_first:.3f} at step 0 → best {tr.val_best:.3f} at step "
                f"{tr.val_best_step}" + (f" (each evaluation: {size})" if size else ""))
        if tr.val_last is not None and tr.val_last > tr.val_best * 1.02:
            text += (f", then up to {tr.val_last:.3f} at the end: overfitting after step {tr.val_best_step} "
                     "(best/ holds the best adapter)")
        out.append(text + ".")
        if tr.final_loss is not None and tr.val_best > 0 and tr.val_best - tr.final_loss > 0.25 * tr.val_best:
            out.append(f"`{run.name}`: generalization gap: train {tr.final_loss:.3f} vs best validation {tr.val_best:.3f}.")
    if s.get("tokens_per_s"):
        text = f"`{run.name}`: {s['tokens_per_s']:,.0f} tokens/s"
        if tr.step_cv is not None:
            text += f", step time varies ±{100 * tr.step_cv:.0f}%"
        if tr.throughput_change is not None and tr.throughput_change < -0.15:
            text += f"; throughput FELL {100 * -tr.throughput_change:.0f}% from the start to the end (data loading? thermal? a shared machine?)"
        out.append(text + ".")
    if tr.mem_growth is not None and tr.mem_growth > 0.3:
        out.append(f"`{run.name}`: memory grew {100 * tr.mem_growth:.0f}% during training (a leak?).")
    data = s.get("data") or {}
    eff = data.get("packing_efficiency")
    if isinstance(eff, (int, float)) and eff < 0.6:
        out.append(f"`{run.name}`: packing efficiency {eff:.0%}: {1 - eff:.0%} of every batch is padding.")
    for w in ((data.get("tokenization") or {}).get("warnings") or [])[:3]:
        out.append(f"`{run.name}` data: {w}")
    if acc is not None:
        out.append(f"`{run.name}`: estimated wall {fmt_duration(acc.estimated_s)} ({acc.source}, {acc.when}), actual "
                   f"{fmt_duration(acc.actual_s)}: time_accuracy {acc.time_accuracy:.2f}.")
    return out


def _trend_words(slope: float | None) -> str:
    if slope is None:
        return ""
    if slope < -0.02:
        return "still falling"
    if slope > 0.02:
        return "RISING"
    return "flat"


# --- the report ----------------------------------------------------------------------------------------

@dataclass
class RunReport:
    run: RunData
    verdicts: list[Verdict]
    trends: Trends
    accuracy: Accuracy | None
    notes: list[str] = field(default_factory=list)
    accuracy_note: str = ""          # why the run's time was not compared with its estimate


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


def build_report(target: str | Path, *, runs_root: Path = Path("runs"), baseline: str | None = None,
                 record_accuracy: bool = True, plots: bool = True, calibrations_dir=None,
                 include_test: bool = False) -> ExperimentReport:
    """Judge, compare and plot an experiment's runs. Writes under its runs/ directory only (plots/,
    time_accuracy.json); `calibrations_dir` is read, for estimates of runs that recorded none."""
    exp_dir = experiment_dir(target, runs_root)
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
        verdicts = [judge(e, run.summary, run.records, b.summary if b else None, b.records if b else None,
                          base_name) for e in expected]
        acc = time_accuracy(run, calibrations_dir)
        note = (accuracy_problem(run) or "no estimate was recorded and none can be made now") if acc is None else ""
        reports.append(RunReport(run, verdicts, trends(run.records), acc, accuracy_note=note))
    for r in reports:
        r.notes = observations(r.run, r.trends, r.accuracy)
    verdict = overall([v for r in reports for v in r.verdicts])
    report = ExperimentReport(experiment, exp_dir, reports, base_name, base_runs, verdict, [], [])
    report.next_steps = next_steps(report)
    if record_accuracy:
        report.accuracy_file = write_accuracy(exp_dir, accuracy_document(experiment, reports))
    if plots:
        from specc.lifecycle.plots import plot_experiment

        report.plots = plot_experiment([r.run for r in reports], exp_dir / "plots", experiment)
    return report


def _first_loss_metric(reports: list[RunReport]) -> str:
    for r in reports:
        for v in r.verdicts:
            if "loss" in v.metric:
                return v.metric
    return "best_val_loss"


def next_steps(rep: ExperimentReport) -> list[str]:
    """Derived from the data: fix what is broken, then a bottleneck, then push further or change approach."""
    steps: list[str] = []
    train = [r for r in rep.runs if r.run.kind == "train"]
    broken = [r for r in train if r.run.status not in ("completed", "early_stopped")]
    for r in broken:
        s = r.run.summary or {}
        if s.get("status") == "diverged":
            steps.append(f"Fix first: `{r.run.name}` diverged ({s.get('stop_reason')}). Lower the learning rate or "
                         "tighten gradient clipping, then rerun (seeds: loss = NaN → reduce LR, add clipping, retest).")
        elif s.get("status") == "interrupted":
            steps.append(f"Finish first: `{r.run.name}` was interrupted at step {s.get('steps')}; `specc run` resumes it "
                         "from its newest checkpoint.")
        else:
            steps.append(f"Fix first: `{r.run.name}` has not finished ({r.run.status}); check `specc watch {r.run.dir}` "
                         "and its SLURM log, then resume with `specc run`.")
    inconclusive = [(r, v) for r in train for v in r.verdicts if v.verdict == INCONCLUSIVE and r not in broken]
    for r, v in inconclusive[:3]:
        steps.append(f"Make `{v.metric}` measurable for `{r.run.name}`: {v.reason}.")
    # Bottlenecks before more experiments.
    for r in train:
        s = r.run.summary or {}
        eff = (s.get("data") or {}).get("packing_efficiency")
        if isinstance(eff, (int, float)) and eff < 0.6:
            steps.append(f"Fix a bottleneck first: `{r.run.name}` spends {1 - eff:.0%} of each batch on padding; "
                         "turn packing on or lower max_length toward the p90 length.")
            break
    for r in train:
        if r.trends.throughput_change is not None and r.trends.throughput_change < -0.2:
            steps.append(f"Fix a bottleneck first: throughput of `{r.run.name}` fell {100 * -r.trends.throughput_change:.0f}% "
                         "during the run; look at data loading and other jobs on the node.")
            break
        if r.trends.mem_growth is not None and r.trends.mem_growth > 0.3:
            steps.append(f"Fix a bottleneck first: memory of `{r.run.name}` grew {100 * r.trends.mem_growth:.0f}%: a leak "
                         "will OOM a longer run.")
            break
    off = [r for r in train if r.accuracy and not 0.8 <= r.accuracy.time_accuracy <= 1.25]
    if off:
        a = off[0].accuracy
        steps.append(f"Recalibrate: the estimate of `{off[0].run.name}` was off (time_accuracy {a.time_accuracy:.2f}, "
                     f"{a.source}); run `specc calibrate SPEC` on the target hardware, or fold the measured ratio into "
                     f"the calibration with `specc calibrate --from-runs {rep.experiment}` so the next estimate of this "
                     "shape is corrected by it.")
    # Then: push further or change approach.
    metric = _first_loss_metric(train)
    finished = [r for r in train if r.run.metric(metric) is not None]
    if len(finished) > 1:
        best = min(finished, key=lambda r: r.run.metric(metric))
        steps.append(f"Best run by {metric}: `{best.run.name}` ({best.run.metric(metric):.4g}); centre the next sweep there.")
    still_falling = [r for r in finished if r.trends.end_slope is not None and r.trends.end_slope < -0.02]
    overfit = [r for r in finished if r.trends.val_last and r.trends.val_best and r.trends.val_last > r.trends.val_best * 1.02]
    if rep.overall == CONFIRMED:
        if still_falling:
            steps.append(f"Push further: the hypothesis held and the loss of `{still_falling[0].run.name}` was still "
                         "falling at the end; train longer (more steps or epochs) with the same configuration.")
        else:
            steps.append("Push further: the hypothesis held and the loss has flattened; test the next change "
                         "(more data, a larger rank or model) against this run as the new baseline.")
    elif rep.overall == REJECTED:
        loss_rejected = any(v.verdict == REJECTED and "loss" in v.metric for r in train for v in r.verdicts)
        if loss_rejected and still_falling:
            steps.append("Change approach, or give it time: the loss target was missed but the loss was still falling; "
                         "a longer run may reach it — or raise the learning rate.")
        elif loss_rejected and overfit:
            steps.append("Change approach: validation loss rose after its best step (overfitting); use fewer epochs, "
                         "more data, dropout or a smaller rank.")
        elif loss_rejected:
            steps.append("Change approach: the loss flattened above the target; change the learning rate, rank, target "
                         "modules or data rather than training longer.")
        else:
            steps.append("Change approach: the speed/memory expectation was missed; profile throughput (`specc plan`) "
                         "and compare shapes with `specc calibrate`.")
    elif not any(r.verdicts for r in train) and finished:
        if overfit:
            steps.append(f"Change approach: validation loss of `{overfit[0].run.name}` rose after step "
                         f"{overfit[0].trends.val_best_step}; train fewer steps or regularise (dropout, smaller rank).")
        elif still_falling:
            steps.append(f"Push further: the loss of `{still_falling[0].run.name}` was still falling at the end; "
                         "train longer.")
    if not steps:
        steps.append("Nothing to judge yet: add expected outcomes to the hypothesis, or let the runs finish.")
    return steps


# --- rendering -----------------------------------------------------------------------------------------

def fmt_metric(name: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if name in ("steps",):
        return f"{value:,.0f}"
    if name == "tokens_per_s":
        return f"{value:,.0f}"
    if name == "wall_hours":     # the expectation metric: hours, as the hypothesis states it
        return f"{value:.3g} h" + (f" ({fmt_duration(value * 3600)})" if value < 1 else "")
    if name in ("wall", "wall_s"):
        return fmt_duration(value)
    if name == "peak_mem_gb":
        return f"{value:.2f} GB"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def run_row(r: RunReport, columns=COLUMNS) -> list[str]:
    row = [r.run.name]
    for c in columns:
        if c == "status":
            row.append(r.run.status)
        elif c == "validated on":
            row.append(eval_size_text(r.run.records) or "—")
        else:
            row.append(fmt_metric(c, r.run.metric(c)))
    verdicts = [v.verdict for v in r.verdicts]
    row.append(" ".join(f"{verdicts.count(k)} {k.lower()}" for k in (CONFIRMED, REJECTED, INCONCLUSIVE)
                        if verdicts.count(k)) or "—")
    return row


def render_markdown(rep: ExperimentReport, sort: str | None = None, descending: bool = False) -> str:
    first = rep.runs[0].run.config
    hyp = first.get("hypothesis") or {}
    n = len(rep.runs)
    done = sum(r.run.status in ("completed", "early_stopped") for r in rep.runs)
    lines = [f"# Report: `{rep.experiment}`", "",
             f"*{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; written by `specc report` from {rep.dir}/.*", "",
             "## Outcome", "",
             (f"**Hypothesis {rep.overall}.** " if any(r.verdicts for r in rep.runs) else
              "**No expected outcomes to judge** (the hypothesis lists none). ") + f"{done} of {n} run(s) finished"
             + (f"; baseline `{rep.baseline}` ({len(rep.baseline_runs)} run(s) found)." if rep.baseline else "."), ""]
    if hyp.get("statement"):
        lines += [f"> {hyp['statement'].strip()}", ""]
    if hyp.get("falsified_if"):
        lines += [f"Falsified if: {hyp['falsified_if']}", ""]
    lines += ["## Metrics", "", "| run | " + " | ".join(COLUMNS) + " | verdicts |",
              "|---" * (len(COLUMNS) + 2) + "|"]
    for r in rep.sorted_runs(sort, descending):
        lines.append("| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(run_row(r))) + " |")
    if sort:
        lines += ["", f"Sorted by {sort}{' (descending)' if descending else ''}."]
    lines += ["", "## Hypothesis validation", ""]
    verdicts = [(r, v) for r in rep.runs for v in r.verdicts]
    if verdicts:
        lines += ["| run | expectation | measured | baseline | compared | verdict | why |", "|---|---|---|---|---|---|---|"]
        for r, v in verdicts:
            lines.append(f"| `{r.run.name}` | {v.expectation} | {fmt_metric(v.metric, v.measured)} | "
                         f"{fmt_metric(v.metric, v.baseline)} | {'—' if v.value is None else f'{v.value:.4g}'} | "
                         f"**{v.verdict}** | {v.reason} |")
    else:
        lines.append("No expected outcomes in the hypothesis: nothing to confirm or reject.")
    accs = [r for r in rep.runs if r.accuracy]
    lines += ["", "## Estimated vs actual", ""]
    if accs:
        lines += ["| run | source | estimated wall | actual wall | time_accuracy (est / actual) |", "|---|---|---|---|---|"]
        for r in accs:
            a = r.accuracy
            lines.append(f"| `{r.run.name}` | {a.source} ({a.when}) | {fmt_duration(a.estimated_s)} | "
                         f"{fmt_duration(a.actual_s)} | {a.time_accuracy:.2f} |")
    else:
        lines.append("No estimate to compare (no calibration or declared figure, or no run that finished as planned).")
    skipped = [r for r in rep.runs if r.run.kind == "train" and r.accuracy is None and accuracy_problem(r.run)]
    if skipped:
        lines += [""] + [f"- `{r.run.name}`: not compared: {r.accuracy_note}." for r in skipped]
    if rep.accuracy_file is not None and accs:
        lines += ["", f"Recorded in `{rep.accuracy_file.as_posix()}` (under runs/: reporting leaves `calibrations/` as it "
                      f"is). `specc calibrate --from-runs {rep.experiment}` folds these ratios into the calibration "
                      "files, and the next estimate of these shapes is corrected by them."]
    if rep.plots:
        lines += ["", "## Plots", ""]
        for p in rep.plots:
            lines.append(f"![{p.stem}](plots/{p.name})")
    lines += ["", "## Observations", ""]
    obs = [o for r in rep.runs for o in r.notes]
    lines += [f"- {o}" for o in obs] or ["- No metrics recorded yet."]
    lines += ["", "## Next steps", ""]
    lines += [f"{i}. {s}" for i, s in enumerate(rep.next_steps, 1)]
    return "\n".join(lines) + "\n"


def write_report(rep: ExperimentReport, sort: str | None = None, descending: bool = False) -> Path:
    path = rep.dir / "report.md"
    path.write_text(render_markdown(rep, sort, descending), encoding="utf-8")
    return path


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
