"""`specc calibrate`: measure each run shape on this hardware and record it under calibrations/."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from backends import unknown_backend
from specc.cli import app
from specc.console import wide_stdout
from specc.errors import UserError
from specc.plan.experiments import plan_specs

out = wide_stdout()

CAL_HELP = "calibrations directory (default: $SPECC_CALIBRATIONS, else ./calibrations)"


def _e(x) -> str:
    return escape(str(x))


@app.command()
def calibrate(
    targets: List[str] = typer.Argument(..., metavar="SPEC | --from-runs EXPERIMENT...",
                                        help="a spec file; with --from-runs, one or more experiments (runs/<name>)"),
    from_runs: bool = typer.Option(False, "--from-runs",
                                   help="no training: fold the time accuracies of these experiments' finished runs "
                                        "(estimated / actual wall time) into the calibration files"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="with --from-runs: where the runs are"),
    run_names: Optional[List[str]] = typer.Option(None, "--run", help="only these runs (default: one per distinct shape)"),
    steps: int = typer.Option(20, "--steps", min=5, help="optimizer steps to run per shape (at least)"),
    min_seconds: float = typer.Option(10.0, "--min-seconds", min=0,
                                      help="measure quick steps for at least this long (more steps, up to 1000)"),
    warmup: int = typer.Option(3, "--warmup", min=0, help="first steps left out of the throughput"),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch, mlx or a registered plugin (overrides the spec)"),
    key: Optional[str] = typer.Option(None, "--key", help="store under calibrations/KEY.json instead of the spec's device key"),
    calibrations: Optional[Path] = typer.Option(None, "--calibrations", help=CAL_HELP),
):
    """Measure tokens/s, peak memory and fixed overheads of each distinct run shape on this hardware.

    With --from-runs EXPERIMENT..., measure nothing: fold the recorded time accuracies of those
    experiments' runs (what `specc report` shows) into calibrations/, the files `specc compile` reads.
    Interrupted, failed and extended runs are skipped, each with its reason."""
    from specc.lifecycle.calibrate import calibrate_plan
    from specc.lifecycle.estimate import fmt_duration

    if from_runs:
        _from_runs(targets, runs_dir, calibrations)
        return
    if len(targets) != 1:
        raise UserError(f"specc calibrate takes one spec file, not {len(targets)} arguments",
                       hint="calibrate each spec separately, or pass --from-runs to fold runs' time accuracies")
    spec = Path(targets[0])
    if backend is not None and unknown_backend(backend):
        raise UserError(f"--backend: {unknown_backend(backend)}")
    (loaded, p), = plan_specs([spec])
    path, results = calibrate_plan(p, steps=steps, warmup=warmup, backend=backend, key=key,
                                   directory=calibrations, only=run_names, min_seconds=min_seconds,
                                   log=lambda m: out.print(_e(m)))
    t = Table(title=f"Calibration → {path}", title_justify="left")
    for c in ("run (shape)", "tokens/s", "step", "± stdev", "peak mem", "startup", "eval batch", "checkpoint", "device"):
        t.add_column(c)
    for r in results:
        e = r.entry
        o = e["overheads"]
        t.add_row(_e(r.run), f"{e['throughput']['tokens_per_s']:,.0f}", f"{e['throughput']['step_s']:.3f} s",
                  f"{e['throughput']['step_s_stdev']:.3f} s", f"{e['memory']['peak_mb']:,.0f} MB",
                  fmt_duration(o["import_s"] + o["model_load_s"] + o["data_s"]), f"{o['eval_batch_s']:.3f} s",
                  f"{o['checkpoint_s']:.2f} s", _e(e["measured"]["device_text"]))
    out.print(t)
    for r in results:
        m = r.entry["measured"]
        threads, share = m.get("threads"), m.get("cpu_share")
        if share is not None and threads and str(m.get("device")) == "cpu" and share < 0.75 * threads:
            out.print(f"[yellow]warning[/]: {_e(r.run)}: the steps got {share:.2f} CPU-seconds per second with {threads} "
                      "thread(s): the machine is shared, and the wall times measured (and estimated) reflect its load "
                      "now. Calibrate again when it is as busy as it will be during the run.")
    out.print(f"commit {path}: `specc compile` and `specc plan` use it for runs of these shapes.")


def _from_runs(experiments: list[str], runs_dir: Path, calibrations: Optional[Path]) -> None:
    from specc.lifecycle.calibrate import calibrate_from_runs

    changes = calibrate_from_runs(experiments, runs_root=runs_dir, directory=calibrations)
    for c in changes:
        colour = {"added": "green", "updated": "green", "unchanged": "dim", "skipped": "yellow"}[c.action]
        out.print(f"  [{colour}]{c.action}[/] {_e(c.run)}: {_e(c.detail())}")
    written = sorted({c.path.as_posix() for c in changes if c.action in ("added", "updated")})
    if written:
        out.print(f"updated {', '.join(written)}: commit it; the next estimates of these shapes are corrected by the "
                  "median time accuracy of their newest records (`specc compile --check` then wants a recompile).")
    else:
        out.print("no calibration file changed")
