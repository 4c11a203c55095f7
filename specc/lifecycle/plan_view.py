"""How `specc plan` shows a PlanReport (planning.py): tables and lines, user text escaped, in order."""
from __future__ import annotations

from collections.abc import Iterator

from rich.table import Table

from specc.estimate.fit import gpu_hours
from specc.fmt import fmt_duration, markup_safe
from specc.lifecycle.planning import PlanReport, short_point_value

SOURCE_LABELS = {"declared": "[yellow]declared, unmeasured[/]", "calibration": "[green]calibration[/]",
                 "prior": "[cyan]prior run[/]", "none": "[dim]none[/]"}


def _table(title: str, columns) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    return t


def plan_lines(rep: PlanReport) -> Iterator:
    """What `specc plan` prints, one renderable (a table or a markup line) at a time."""
    p = rep.plan
    n_control = sum(r.kind == "control" for r in p.runs)
    yield (f"[bold]{markup_safe(p.experiment)}[/] ({markup_safe(rep.spec_path)}): {len(p.runs) - n_control} training "
           "run(s)" + (f" + {n_control} control" if n_control else "") + f", profile {p.spec.profile}")
    if rep.inputs is not None:
        yield from _model_lines(rep)
        yield from _data_lines(rep)
    yield from _estimate_lines(rep)
    yield from _memory_lines(rep)
    yield from _fit_lines(rep)
    if p.spec.sweep is not None:
        yield ""
        yield _sweep_table(rep)
    if rep.total_h:
        yield (f"[bold]Total[/]: {rep.total_h:.2f} h of jobs" + (f", {rep.total_gpu_h:.1f} GPU-hours" if rep.total_gpu_h
                                                                else "")
               + (" (estimated runs only)" if rep.partly_estimated else ""))
    else:
        yield "[bold]Total[/]: not estimated (run `specc calibrate` on the target hardware)"
    for w in p.warnings:
        yield f"[yellow]warning[/]: {markup_safe(w)}"
    if rep.inputs is not None and rep.inputs.elsewhere:
        yield f"note: not on this machine, so not checked here: {markup_safe(', '.join(rep.inputs.elsewhere))}"


def _model_lines(rep: PlanReport) -> Iterator:
    t = _table("Model", ("model", "status", "parameters", "layers × hidden", "notes"))
    hints = []
    for path, m in rep.models.items():
        arch = f"{m.arch.get('num_hidden_layers', '?')} × {m.arch.get('hidden_size', '?')}" if m.ok else "—"
        if not m.ok:
            hints.append(f"{path}: " + (f"available beside it: {', '.join(m.available)}" if m.available
                                        else m.hint or "nothing usable beside it"))
        t.add_row(markup_safe(path), "[green]ok[/]" if m.ok else "[red]missing[/]",
                  f"{m.params / 1e6:,.1f} M" if m.params else "—", arch, markup_safe("" if m.ok else m.problem))
    yield t
    for h in hints:
        yield f"  [red]model[/]: {markup_safe(h)}"


def _data_lines(rep: PlanReport) -> Iterator:
    t = _table("Data (tokenized with the model's tokenizer)",
               ("runs", "samples (train/valid/test)", "tokens p50/p90/max", "truncated", "windows / overlap / seen",
                "packing eff.", "batches/epoch", "steps", "tokens fed"))
    warnings = []
    for a, names in rep.data_groups:
        label = names[0] if len(names) == 1 else f"{names[0]} … ({len(names)})"
        if a.problem:
            t.add_row(markup_safe(label), markup_safe(a.problem.splitlines()[0]), "", "", "", "", "", "", "")
            continue
        r = a.report
        split = "/".join(str(a.splits.get(s, "—")) for s in ("train", "valid", "test"))
        trunc = f"{r.n_truncated / r.n_examples:.0%} of samples" if r.n_examples else "—"
        if a.truncated_token_share is not None:
            trunc += f", {a.truncated_token_share:.0%} of tokens"
        windows = (f"{r.n_sequences:,} / {r.overlap_fraction:.0%} / {r.times_seen_per_epoch:.2f}×"
                   + (f" (stride {r.stride})" if r.stride else " (no stride)"))
        t.add_row(markup_safe(label), split, f"{r.length_p50}/{r.length_p90}/{r.length_max}", trunc, windows,
                  f"{a.packing_efficiency:.0%}", f"{a.batches_per_epoch:,}", f"{a.steps:,}", f"{a.tokens:,.0f}")
        warnings += [f"{label}: {w}" for w in a.warnings]
    if rep.data_groups:
        yield t
    for w in dict.fromkeys(warnings):
        yield f"[yellow]compute wasted[/]: {markup_safe(w)}"


def _estimate_lines(rep: PlanReport) -> Iterator:
    t = _table("Estimates (every number with its source)",
               ("run", "source", "steps", "tokens", "tok/s", "steps time", "+ evals, ckpts", "= wall",
                "+ startup = job", "peak mem", "window"))
    for run in rep.plan.runs:
        e, fit = rep.estimates[run.name], rep.fits[run.name]
        declared = e.source == "declared"
        fit_text = "—" if fit.fits is None else ("[green]fits[/]" if fit.fits else "[red]does not fit[/]")
        t.add_row(markup_safe(run.name), SOURCE_LABELS[e.source], f"{e.steps:,}" if e.steps else "—",
                  f"{e.tokens:,.0f}" if e.tokens else "—", f"{e.tokens_per_s:,.0f}" if e.tokens_per_s else "—",
                  fmt_duration(e.train_s) if e.train_s is not None else "—",
                  "not in figure" if declared else fmt_duration(e.overhead_s) if e.train_s is not None else "—",
                  fmt_duration(e.wall_s) if e.wall_s is not None else "—",
                  ("not in figure" if declared else fmt_duration(e.total_s)) if e.total_s is not None else "—",
                  f"{e.peak_mem_gb:.2f} GB" if e.peak_mem_gb else "—", fit_text)
    yield t
    for text, kind in rep.sources.items():
        yield f"  source ({kind}): {markup_safe(text)}"
    for ts in rep.tokens_sources[:3]:
        yield f"  tokens: {markup_safe(ts)}"
    first = rep.first_train
    e = rep.estimates[first.name]
    if e.parts and e.source == "calibration":
        yield ("  breakdown (" + markup_safe(first.name) + "): "
               + ", ".join(f"{k} {fmt_duration(v)}" for k, v in e.parts.items()))
    for note in rep.notes:
        yield f"  note: {markup_safe(note)}"


def _memory_lines(rep: PlanReport) -> Iterator:
    """Peak GPU memory of the first training run, part by part, before it runs (specc/estimate/memory.py)."""
    m = rep.memory
    if m is None:
        return
    first = rep.first_train
    t = _table(f"Peak GPU memory before the run ({markup_safe(first.name)}, micro-batch {m.batch_size})",
               ("part", "GB"))
    for part, mb in m.parts.items():
        t.add_row(part, f"{mb / 1024:,.2f}")
    t.add_row("[bold]on the GPU[/]", f"[bold]{m.device_mb / 1024:,.2f}[/]")
    yield ""
    yield t
    yield (f"  peak allocated (torch.cuda.max_memory_allocated): training {m.train_peak_mb / 1024:,.2f} GB, evaluation "
           f"{m.eval_peak_mb / 1024:,.2f} GB")
    if rep.memory_gpu:
        gpu, gb, headroom = rep.memory_gpu
        share = m.device_mb / 1024 / gb
        colour = "green" if share <= headroom else "red"
        yield (f"  [{colour}]{share:.0%} of the {markup_safe(gpu)}'s {gb:g} GB[/] (headroom: resources.memory_headroom "
               f"{headroom:.0%})")
    yield f"  source ({m.source}): {markup_safe(m.source_text)}"
    for note in m.notes:
        yield f"  note: {markup_safe(note)}"


def _fit_lines(rep: PlanReport) -> Iterator:
    yield ""
    yield "[bold]Fit to the window[/]"
    for fit, names in rep.fit_groups:
        colour = "green" if fit.fits else "red" if fit.fits is False else "yellow"
        yield f"  {markup_safe(', '.join(names))}: [{colour}]{markup_safe(fit.text)}[/]"
        for s in fit.suggestions:
            yield f"    → {markup_safe(s)}"
    res = rep.first_train.resources
    yield (f"  sbatch --time {res.time} ({markup_safe(res.time_source)}); signal {res.signal_lead_s} s before it "
           f"({markup_safe(res.signal_lead_source)})")
    if rep.batch_note:
        yield f"  {markup_safe(rep.batch_note)}"


def _sweep_table(rep: PlanReport) -> Table:
    p = rep.plan
    axes = list(p.spec.sweep.matrix)
    t = _table(f"Sweep: {len(p.runs)} runs, naming {p.spec.sweep.name}",
               ("#", "run", "kind", *axes, "steps", "job time", "GPU-hours"))
    for run in p.runs:
        point = dict(run.overrides)
        e = rep.estimates[run.name]
        t.add_row(str(run.index), markup_safe(run.name), run.kind,
                  *[markup_safe(short_point_value(point.get(a, "—"))) for a in axes],
                  f"{run.steps.steps:,}" if run.steps.steps else "—",
                  fmt_duration(e.total_s) if e.total_s else "—",
                  f"{gpu_hours(e.total_s, run.resources.gpus):.2f}" if e.total_s and run.resources.gpus else "—")
    return t
