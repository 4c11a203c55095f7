"""`specc plan`: model and data checks, dataset analysis, estimates with their sources, fit to the window."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from specc.cli import app
from specc.plan.experiments import plan_specs
from specc.console import wide_stdout
from specc.errors import UserError

out = wide_stdout()

CAL_HELP = "calibrations directory (default: $SPECC_CALIBRATIONS, else ./calibrations)"


def _e(x) -> str:
    return escape(str(x))


@app.command()
def plan(
    spec: Path = typer.Argument(..., help="a spec file"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where prior runs are (estimate source 2)"),
    data: bool = typer.Option(True, "--data/--no-data", help="analyse the local model and data with the real tokenizer"),
    calibrations: Optional[Path] = typer.Option(None, "--calibrations", help=CAL_HELP),
):
    """Check the model and data, estimate time and memory (every number with its source), fit the window."""
    from specc.lifecycle.calibrations import load_calibration
    from specc.lifecycle.estimate import (
        estimate_run,
        fit_window,
        fmt_duration,
        gpu_hours,
        load_priors,
        recommend_batch,
    )
    from specc.lifecycle.shape import device_key
    from specc.spec.clusters import load_catalog
    from specc.spec.model import parse_time

    from specc.plan.inputs import check_inputs

    (loaded, p), = plan_specs([spec])
    inputs = check_inputs(p, loaded) if data else None
    n_control = sum(r.kind == "control" for r in p.runs)
    out.print(f"[bold]{_e(p.experiment)}[/] ({_e(spec)}): {len(p.runs) - n_control} training run(s)"
              + (f" + {n_control} control" if n_control else "") + f", profile {p.spec.profile}")

    # Model check.
    models, analyses, facts = {}, {}, {}
    if data:
        from specc.lifecycle.analysis import (
            analyze_data,
            check_model,
            clear_caches,
            facts_from_analysis,
        )

        clear_caches()

        for run in p.runs:
            path = run.config["model"]["path"]
            if path not in models:
                models[path] = check_model(path)
        t = Table(title="Model", title_justify="left")
        for c in ("model", "status", "parameters", "layers × hidden", "notes"):
            t.add_column(c)
        hints = []
        for path, m in models.items():
            arch = f"{m.arch.get('num_hidden_layers', '?')} × {m.arch.get('hidden_size', '?')}" if m.ok else "—"
            note = "" if m.ok else m.problem
            if not m.ok:
                hints.append(f"{path}: " + (f"available beside it: {', '.join(m.available)}" if m.available
                                            else m.hint or "nothing usable beside it"))
            t.add_row(_e(path), "[green]ok[/]" if m.ok else "[red]missing[/]",
                      f"{m.params / 1e6:,.1f} M" if m.params else "—", arch, _e(note))
        out.print(t)
        for h in hints:
            out.print(f"  [red]model[/]: {_e(h)}")
        # Dataset analysis (one per distinct tokenization/batching).
        t = Table(title="Data (tokenized with the model's tokenizer)", title_justify="left")
        for c in ("runs", "samples (train/valid/test)", "tokens p50/p90/max", "truncated", "windows / overlap / seen",
                  "packing eff.", "batches/epoch", "steps", "tokens fed"):
            t.add_column(c)
        warnings = []
        groups: dict = {}
        for run in p.runs:
            if run.kind != "train":
                continue
            m = models[run.config["model"]["path"]]
            if not m.ok:
                continue
            a = analyze_data(run.config, m.resolved)
            groups.setdefault(a.key, (a, []))[1].append(run.name)
            analyses[run.name] = a
            f = facts_from_analysis(run.config, a)
            if f is not None:
                facts[run.name] = f
        for a, names in groups.values():
            label = names[0] if len(names) == 1 else f"{names[0]} … ({len(names)})"
            if a.problem:
                t.add_row(_e(label), _e(a.problem.splitlines()[0]), "", "", "", "", "", "", "")
                continue
            r = a.report
            split = "/".join(str(a.splits.get(s, "—")) for s in ("train", "valid", "test"))
            trunc = f"{r.n_truncated / r.n_examples:.0%} of samples" if r.n_examples else "—"
            if a.truncated_token_share is not None:
                trunc += f", {a.truncated_token_share:.0%} of tokens"
            windows = (f"{r.n_sequences:,} / {r.overlap_fraction:.0%} / {r.times_seen_per_epoch:.2f}×"
                       + (f" (stride {r.stride})" if r.stride else " (no stride)"))
            t.add_row(_e(label), split, f"{r.length_p50}/{r.length_p90}/{r.length_max}", trunc, windows,
                      f"{a.packing_efficiency:.0%}", f"{a.batches_per_epoch:,}", f"{a.steps:,}", f"{a.tokens:,.0f}")
            warnings += [f"{label}: {w}" for w in a.warnings]
        if groups:
            out.print(t)
        for w in dict.fromkeys(warnings):
            out.print(f"[yellow]compute wasted[/]: {_e(w)}")

    # Estimates.
    priors = load_priors(runs_dir)
    cals: dict = {}
    estimates = {}
    for run in p.runs:
        key = device_key(run.config["resources"])
        if key not in cals:
            cals[key] = load_calibration(key, calibrations)
        m = models.get(run.config["model"]["path"])
        estimates[run.name] = estimate_run(run.config, calibration=cals[key], facts=facts.get(run.name), priors=priors,
                                           new_params=m.params if m and m.ok else None,
                                           new_arch=m.arch if m and m.ok and m.arch.get("hidden_size") else None)
    t = Table(title="Estimates (every number with its source)", title_justify="left")
    for c in ("run", "source", "steps", "tokens", "tok/s", "steps time", "+ evals, ckpts", "= wall",
              "+ startup = job", "peak mem", "window"):
        t.add_column(c)
    sources: dict[str, str] = {}
    total_h = total_gpu_h = 0.0
    catalog, _ = load_catalog(p.spec_path, p.spec.resources.catalog)
    fits = {}
    for run in p.runs:
        e = estimates[run.name]
        sources.setdefault(e.source_text, e.source)
        r = run.spec.resources
        fit = fit_window(run.config, e, r.window_hours, r.margin_hours,
                         None if r.window_hours else parse_time(run.resources.time))
        fits[run.name] = fit
        declared = e.source == "declared"
        label = {"declared": "[yellow]declared, unmeasured[/]", "calibration": "[green]calibration[/]",
                 "prior": "[cyan]prior run[/]", "none": "[dim]none[/]"}[e.source]
        fit_text = "—" if fit.fits is None else ("[green]fits[/]" if fit.fits else "[red]does not fit[/]")
        t.add_row(_e(run.name), label, f"{e.steps:,}" if e.steps else "—",
                  f"{e.tokens:,.0f}" if e.tokens else "—", f"{e.tokens_per_s:,.0f}" if e.tokens_per_s else "—",
                  fmt_duration(e.train_s) if e.train_s is not None else "—",
                  "not in figure" if declared else fmt_duration(e.overhead_s) if e.train_s is not None else "—",
                  fmt_duration(e.wall_s) if e.wall_s is not None else "—",
                  ("not in figure" if declared else fmt_duration(e.total_s)) if e.total_s is not None else "—",
                  f"{e.peak_mem_gb:.2f} GB" if e.peak_mem_gb else "—", fit_text)
        if e.total_s:
            total_h += e.total_s / 3600
            total_gpu_h += gpu_hours(e.total_s, run.resources.gpus) or 0
    out.print(t)
    for text, kind in sources.items():
        out.print(f"  source ({kind}): {_e(text)}")
    tok_sources = {estimates[r.name].tokens_source for r in p.runs if estimates[r.name].tokens_source and r.kind == "train"}
    for ts in sorted(tok_sources)[:3]:
        out.print(f"  tokens: {_e(ts)}")
    first = next((r for r in p.runs if r.kind == "train"), p.runs[0])
    e = estimates[first.name]
    if e.parts and e.source == "calibration":
        out.print("  breakdown (" + _e(first.name) + "): " + ", ".join(f"{k} {fmt_duration(v)}" for k, v in e.parts.items()))
    for note in dict.fromkeys(n for est in estimates.values() for n in est.notes):
        out.print(f"  note: {_e(note)}")

    # Window and batch.
    out.print("")
    out.print("[bold]Fit to the window[/]")
    groups: dict = {}   # runs with the same verdict are listed together, none dropped
    for run in p.runs:
        fit = fits[run.name]
        if run.kind == "train":
            groups.setdefault((fit.text, fit.suggestions), (fit, []))[1].append(run.name)
    for fit, names in groups.values():
        colour = "green" if fit.fits else "red" if fit.fits is False else "yellow"
        out.print(f"  {_e(', '.join(names))}: [{colour}]{_e(fit.text)}[/]")
        for s in fit.suggestions:
            out.print(f"    → {_e(s)}")
    res = first.resources
    out.print(f"  sbatch --time {res.time} ({_e(res.time_source)}); signal {res.signal_lead_s} s before it "
              f"({_e(res.signal_lead_source)})")
    cluster = catalog.clusters.get(res.cluster)
    gpu_mem = cluster.gpu_types[res.gpu_type].memory_gb if cluster and res.gpu_type in (cluster.gpu_types or {}) else None
    if res.gpus and gpu_mem:
        for run in p.runs:
            if run.kind != "train":
                continue
            est = estimates[run.name]
            entry = cals.get(device_key(run.config["resources"]))
            fixed = None
            if entry and est.source == "calibration":
                mem = (entry.entry(est.shape_key) or {}).get("memory") or {}
                fixed = mem.get("fixed_mb") / 1024 if mem.get("fixed_mb") else None
            rec = recommend_batch(est, gpu_mem, run.spec.training.batch_size, run.spec.training.grad_accum, fixed)
            if rec:
                out.print(f"  batch for {_e(run.name)} on {res.gpu_type} ({gpu_mem:g} GB): {_e(rec[2])}")
            elif est.peak_mem_gb and not est.measured:
                out.print(f"  batch: peak memory {est.peak_mem_gb:g} GB is declared, not measured; calibrate to size "
                          "the batch for 70% of the GPU")
            break
    elif res.gpus:
        out.print(f"  batch: the catalog has no memory figure for GPU type {res.gpu_type!r}; cannot size the batch")

    # Sweep summary.
    if p.spec.sweep is not None:
        out.print("")
        t = Table(title=f"Sweep: {len(p.runs)} runs, naming {p.spec.sweep.name}", title_justify="left")
        axes = list(p.spec.sweep.matrix)
        for c in ("#", "run", "kind", *axes, "steps", "job time", "GPU-hours"):
            t.add_column(c)
        for run in p.runs:
            point = dict(run.overrides)
            e = estimates[run.name]
            t.add_row(str(run.index), _e(run.name), run.kind,
                      *[_e(_short(point.get(a, "—"))) for a in axes],
                      f"{run.steps.steps:,}" if run.steps.steps else "—",
                      fmt_duration(e.total_s) if e.total_s else "—",
                      f"{gpu_hours(e.total_s, run.resources.gpus):.2f}" if e.total_s and run.resources.gpus else "—")
        out.print(t)
    if total_h:
        out.print(f"[bold]Total[/]: {total_h:.2f} h of jobs" + (f", {total_gpu_h:.1f} GPU-hours" if total_gpu_h else "")
                  + (" (estimated runs only)" if any(estimates[r.name].total_s is None for r in p.runs
                                                     if r.kind == "train") else ""))
    else:
        out.print("[bold]Total[/]: not estimated (run `specc calibrate` on the target hardware)")
    for w in p.warnings:
        out.print(f"[yellow]warning[/]: {_e(w)}")
    _fail_on_broken_inputs(inputs, analyses)


def _fail_on_broken_inputs(inputs, analyses: dict) -> None:
    """A broken model or data file fails the plan (exit 1) with the errors `specc run` would give, in full."""
    from specc.errors import SpecError

    if inputs is None:
        return
    problems = list(inputs.problems)
    reported = {str(i) for i in problems}
    extra = [a.problem for a in {id(a): a for a in analyses.values()}.values()
             if a.problem and not a.problem.startswith("not on this machine") and not any(
                 a.problem.splitlines()[0] in r for r in reported)]
    if inputs.elsewhere:
        out.print(f"note: not on this machine, so not checked here: {_e(', '.join(inputs.elsewhere))}")
    lines = [str(i) for i in SpecError(problems).issues] + extra
    if lines:
        raise UserError(f"{len(lines)} problem{'s' if len(lines) != 1 else ''} with the model and data; `specc run` "
                       "would stop on them at start:\n" + "\n".join(lines))


def _short(v) -> str:
    if isinstance(v, dict):
        keys = [k for k in ("size", "rank") if k in v] or [k for k in v if k == "path"] or list(v)[:2]
        return ", ".join(f"{k}={v[k]}" for k in keys)[:40]
    return str(v)
