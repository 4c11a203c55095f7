"""How a report is shown: runs/<experiment>/report.md (outcome, metrics, verdicts, estimated vs actual
time, plots, observations and next steps), and what `specc report` prints."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from specc.fmt import fmt_duration, markup_safe
from specc.lifecycle.accuracy import accuracy_problem
from specc.lifecycle.report import ExperimentReport, RunReport
from specc.lifecycle.report_tasks import task_markdown, task_rows
from specc.lifecycle.rundata import eval_size_text
from specc.lifecycle.verdict import CONFIRMED, INCONCLUSIVE, REJECTED

# The report's table. `wall` is summary.json's wall_s, shown as a duration (the expectation metric
# wall_hours stays in hours); `validated on` is the size of each evaluation (metrics.jsonl eval lines).
COLUMNS = ("status", "steps", "best_val_loss", "final_loss", "tokens_per_s", "wall", "peak_mem_gb", "validated on")


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
    lines += [""] + task_markdown([r.run for r in rep.runs])
    lines += ["## Hypothesis validation", ""]
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
    used = [r for r in rep.runs if r.usage is not None]
    if used:
        lines += ["", "## Used against asked (SLURM)", "",
                  "| run | time asked (one job) | used | used / asked | GPU-h asked | GPU-h used | source | --time next time |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in used:
            u = r.usage.to_dict()
            lines.append(f"| `{r.run.name}` | {_t(u['asked_s'])} | {fmt_duration(u['used_s'])} | "
                         f"{_pct(u['ratio'])} | "
                         f"{_h(u['asked_gpu_h'])} | {_h(u['used_gpu_h'])} | {u['source'] or '—'} | "
                         f"{u['suggested_time'] or '— (not finished)'} |")
        lines += ["", "The suggestion is the measured time + 10% + 10 min, rounded up to 5 min: set it as "
                      "`resources.time` (or a `sweep.resources` rule for that shape)."]
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


def report_lines(rep: ExperimentReport, sort: str | None = None, descending: bool = False) -> Iterator:
    """What `specc report` prints before it writes report.md: the outcome, the metrics table, each verdict and
    time comparison, the next steps (rich markup; user text escaped)."""
    colour = {CONFIRMED: "green", REJECTED: "red"}.get(rep.overall, "yellow")
    yield (f"[bold]{markup_safe(rep.experiment)}[/]: hypothesis [{colour}]{rep.overall}[/]"
           + (f" (baseline {markup_safe(rep.baseline)})" if rep.baseline else ""))
    t = Table(title_justify="left")
    for c in ("run", *COLUMNS, "verdicts"):
        t.add_column(c)
    for r in rep.sorted_runs(sort, descending):
        t.add_row(*map(markup_safe, run_row(r)))
    yield t
    header, rows = task_rows([r.run for r in rep.runs])
    if rows:
        tasks = Table(title="task scores: % [95% interval] n (control = the base model, untrained)", title_justify="left")
        for c in header:
            tasks.add_column(c)
        for row in rows:
            tasks.add_row(*map(markup_safe, row))
        yield tasks
    for r in rep.runs:
        name = markup_safe(r.run.name)
        for v in r.verdicts:
            c = {CONFIRMED: "green", REJECTED: "red"}.get(v.verdict, "yellow")
            yield f"  {name}: {markup_safe(v.expectation)} → [{c}]{v.verdict}[/] ({markup_safe(v.reason)})"
        if r.accuracy:
            yield (f"  {name}: time_accuracy {r.accuracy.time_accuracy:.2f} (estimated {r.accuracy.estimated_s:,.0f} s, "
                   f"actual {r.accuracy.actual_s:,.0f} s, {r.accuracy.source})")
        elif r.accuracy_note and r.run.kind == "train" and r.run.summary:
            yield f"  {name}: time not compared with the estimate: {markup_safe(r.accuracy_note)}"
        if r.usage is not None and r.usage.used_s is not None:
            u = r.usage.to_dict()
            yield (f"  {name}: asked {_t(u['asked_s'])}, used {fmt_duration(u['used_s'])} ({u['source']})"
                   + (f", {u['ratio']:.0%} of the limit" if u["ratio"] is not None else "")
                   + (f"; GPU-h {u['used_gpu_h']:.2f} of {u['asked_gpu_h']:.2f}" if u["gpus"] and u["asked_gpu_h"] else "")
                   + (f"; next time --time={u['suggested_time']}" if u["suggested_time"] else ""))
    for i, s in enumerate(rep.next_steps, 1):
        yield f"  next {i}. {markup_safe(s)}"


def _t(seconds) -> str:
    from specc.spec.model import format_time
    return "—" if seconds is None else format_time(seconds)


def _h(gpu_h) -> str:
    return "—" if gpu_h is None else f"{gpu_h:.2f}"


def written_lines(rep: ExperimentReport, path: Path) -> Iterator[str]:
    """What `specc report` says it wrote."""
    yield f"wrote {path}" + (f" and {len(rep.plots)} plot(s) in {rep.dir / 'plots'}" if rep.plots else "")
    if rep.accuracy_file is not None and any(r.accuracy for r in rep.runs):
        yield (f"recorded time accuracy in {rep.accuracy_file}; fold it into calibrations/ with "
               f"`specc calibrate --from-runs {markup_safe(rep.experiment)}`")


def _pct(ratio) -> str:
    return "—" if ratio is None else f"{ratio:.0%}"
