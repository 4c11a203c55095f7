"""What the runs' metrics say beyond the verdicts: trends per run, observations in words, and the next
steps, derived from the data: fix what is broken, then a bottleneck, then push further or change approach."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from specc.fmt import fmt_duration
from specc.lifecycle.accuracy import Accuracy
from specc.lifecycle.rundata import RunData, eval_size_text
from specc.lifecycle.verdict import CONFIRMED, INCONCLUSIVE, REJECTED

if TYPE_CHECKING:
    from specc.lifecycle.report import ExperimentReport, RunReport


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
