"""`specc submit`, `specc status`, `specc cancel` and `specc gate`: hand compiled experiments to SLURM."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from specc.cli import app
from specc.console import stderr_console, stdout_console, wide_stdout
from specc.errors import EXIT_FAILED, UserError
from specc.plan.experiments import plan_specs

out, err = stdout_console(), stderr_console()


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="the experiment spec"),
    dry_run: bool = typer.Option(False, "--dry-run", help="compile, choose partitions and print the sbatch commands; submit nothing"),
    run_name: Optional[str] = typer.Option(None, "--run", help="submit only this run of a sweep (its own jobs, not the array)"),
    out_dir: Path = typer.Option(Path("generated"), "--out", help="where compiled artifacts go"),
    unfinished: bool = typer.Option(False, "--unfinished", help="submit again only the runs that did not finish "
                                    "(interrupted, timed out, failed on a node, never started); each resumes from "
                                    "its newest valid checkpoint"),
):
    """Compile a spec and submit it to SLURM: the test stage first, the full run (or sweep array) after it.

    The full run waits for its test stage (afterok) and is cancelled if the test fails; its first step
    is `specc gate`, which refuses unless the test finished with a finite, falling loss and measured
    throughput. Partitions are chosen from the spec's choices by fit and by room now (sinfo).
    Jobs are recorded in runs/<experiment>/jobs.json for `specc status` and `specc cancel`.
    """
    from specc.emit.writer import render_experiment, write_files
    from specc.slurm import client
    from specc.slurm.state import load_jobs
    from specc.slurm.submit import (
        active_jobs,
        command_line,
        job_env,
        plan_jobs,
        submit_jobs,
    )

    [(loaded, plan)] = plan_specs([spec])
    result = write_files(out_dir / plan.experiment, render_experiment(loaded, plan))
    out.print(f"[green]compiled[/] {escape(str(spec))} → {escape(str(out_dir / plan.experiment))}/ "
              f"({len(result.written)} written, {result.unchanged} unchanged)")
    for w in plan.warnings:
        out.print(f"  [yellow]warning[/]: {escape(w)}")
    have_sinfo = client.available()
    only = None
    if unfinished:
        only = _unfinished(plan, run_name)
        if not only:
            out.print("nothing to resubmit: every run finished, is still queued or running, or must be fixed first")
            return
    planned = plan_jobs(plan, out_dir, run_name, sinfo=client.sinfo_nodes if have_sinfo else None, only=only)
    for job in planned:
        d = job.decision
        if d.chosen is None:
            raise UserError(f"{job.label}: {d.why}", hint="change resources (or the choices) in the spec")
        if job.array and job.stage == "full" and job.why:
            out.print(f"[bold]{job.script.name}[/]: {escape(job.why)}")
        out.print(f"[bold]{job.label}[/] → {escape(d.chosen.label)}: {escape(d.why)}")
    env = job_env()
    if dry_run:
        out.print("[yellow]dry run[/]: nothing submitted; the commands would be:")
        for job in planned:
            out.print("  " + escape(command_line(job, env)))
        return
    if not have_sinfo:
        raise UserError("sbatch not found: SLURM's client commands are not installed here",
                        hint="run this on the cluster's login node, or use --dry-run to see the commands")
    busy = active_jobs(load_jobs(plan.experiment), sorted({r.name for job in planned for _, r in job.members}))
    if busy:
        listing = ", ".join(f"{run} {rec.stage} job {rec.job_id} {state}" for run, rec, state in busy)
        raise UserError(f"already submitted and not finished: {listing}",
                        hint=f"wait, or `specc cancel {plan.experiment}` first (runs resume from their checkpoints)")
    submit_jobs(plan, planned, env, say=lambda m: out.print(f"[green]{escape(m)}[/]"))
    out.print(f"jobs recorded in runs/{plan.experiment}/jobs.json; follow them with `specc status {plan.experiment}`")


def _unfinished(plan, run_name) -> dict[str, bool]:
    """--unfinished: say what is resubmitted and what is left alone; {run: its test stage runs again}."""
    from specc.slurm.state import load_jobs
    from specc.slurm.unfinished import verdicts

    runs = [r for r in plan.runs if run_name is None or r.name == run_name]
    chosen = {}
    for v in verdicts(plan.experiment, runs, load_jobs(plan.experiment)):
        if v.resubmit:
            chosen[v.run] = v.retest
            out.print(f"[green]resubmit[/] {escape(v.run)}: {escape(v.why)}")
        else:
            out.print(f"[yellow]skip[/] {escape(v.run)}: {escape(v.why)}")
    return chosen


@app.command()
def status(
    experiment: Optional[str] = typer.Argument(None, help="an experiment (default: every one with runs/<exp>/jobs.json)"),
    watch: bool = typer.Option(False, "--watch", help="refresh the table until every job has ended"),
    interval: float = typer.Option(10.0, "--interval", min=0.5, help="seconds between refreshes with --watch"),
):
    """Runs, their SLURM jobs and progress: state, step, loss, ETA, restarts, time and GPU-hours asked and used."""
    import time

    from specc.slurm.state import known_experiments
    from specc.slurm.status import all_ended

    # In a log or a pipe rich would wrap the table at 80 columns; keep one row per line there.
    console = out if out.is_terminal else wide_stdout(300)
    names = [experiment] if experiment else known_experiments()
    if not names:
        out.print("no submitted experiments (runs/*/jobs.json); submit one with `specc submit SPEC`")
        return
    for name in names:
        if not Path("runs", name, "jobs.json").is_file():
            raise UserError(f"no jobs recorded for experiment {name!r} (runs/{name}/jobs.json)",
                            hint="submit it with `specc submit SPEC`")
    while True:
        tables = [_status_table(name) for name in names]
        if watch and console.is_terminal:
            console.clear()
        for table, _ in tables:
            console.print(table)
        if not watch or all(all_ended(found) for _, found in tables):
            return
        console.print(f"[dim]refreshing every {interval:g} s until every job has ended (Ctrl-C stops)[/]")
        time.sleep(interval)


def _status_table(name: str):
    from specc.fmt import compact_duration
    from specc.slurm.status import rows

    table = Table(title=f"{name}", title_justify="left")
    for col in ("run", "stage", "job", "partition", "state", "step", "loss", "eta", "restarts", "asked", "used",
                "used/asked", "GPU-h used/asked", "note"):
        table.add_column(col, overflow="fold", no_wrap=col != "note")
    found = rows(name)
    for r in found:
        step = "—" if r.step is None else (f"{r.step}/{r.total}" if r.total else str(r.step))
        loss = "—" if r.loss is None else f"{r.loss:.4f}"
        u = r.usage
        asked = compact_duration(u.asked_s) if u else "—"
        used = (compact_duration(u.used_s) + f" ({u.source})") if u and u.used_s is not None else "—"
        ratio = f"{u.ratio:.0%}" if u and u.ratio is not None else "—"
        gpu_h = f"{u.used_gpu_h:.2f}/{u.asked_gpu_h:.2f}" if u and u.gpus and u.used_s is not None and u.asked_s \
            else "—"
        table.add_row(r.run, r.stage, r.job_id, r.partition, r.state, step, loss, compact_duration(r.eta_s),
                      "—" if r.restarts is None else str(r.restarts), asked, used, ratio, gpu_h, escape(r.note))
    return table, found


@app.command()
def cancel(
    target: str = typer.Argument(..., help="EXPERIMENT or EXPERIMENT/RUN"),
):
    """Cancel the recorded SLURM jobs of an experiment or of one run (checkpoints stay; resubmit to resume)."""
    from specc.slurm.state import load_jobs
    from specc.slurm.status import cancel as cancel_jobs

    experiment, _, run = target.partition("/")
    jobs = load_jobs(experiment)
    if not jobs.runs:
        raise UserError(f"no jobs recorded for experiment {experiment!r} (runs/{experiment}/jobs.json)")
    if run and run not in jobs.runs:
        raise UserError(f"experiment {experiment} has no recorded run {run!r}", hint="runs: " + ", ".join(jobs.runs))
    ids = cancel_jobs(experiment, run or None)
    out.print(f"cancelled {', '.join(ids)}" if ids else "nothing to cancel: every recorded job has finished")


@app.command()
def gate(
    config: Path = typer.Argument(..., help="generated/<exp>/<run>/config.json of the full run"),
):
    """Check a run's finished test stage before its full run trains (exit 0: go, 1: refused, with the reasons).

    The test stage must have completed (or early-stopped) with a finite training loss whose last third
    averages below its first third, and with throughput measured. The verdict goes to <run>.test/gate.json.
    """
    from specc.engine.config import load_run_config
    from specc.slurm.gate import check_test_stage, write_verdict

    cfg = load_run_config(config, None)
    if cfg.test_max_steps is None:
        out.print(f"specc gate: {cfg.experiment}/{cfg.run} has no test stage; nothing to check")
        return
    test_dir = cfg.for_stage("test").output_dir
    verdict = check_test_stage(test_dir)
    try:
        write_verdict(verdict)
    except OSError as exc:
        err.print(f"warning: cannot write {test_dir}/gate.json: {exc}")
    facts = ", ".join(f"{k}={v}" for k, v in verdict.facts.items())
    if verdict.ok:
        out.print(f"specc gate: {cfg.experiment}/{cfg.run}: the test stage passed ({facts})", markup=False)
        return
    err.print(f"specc gate: {cfg.experiment}/{cfg.run}: refusing to start the full run: {verdict.reason}", markup=False)
    err.print(f"  test stage: {test_dir} ({facts})", markup=False)
    raise typer.Exit(EXIT_FAILED)
