"""Benchmark: is `specc calibrate` + the estimate within ±10% of the measured wall time?

For each spec: `specc calibrate SPEC`, then `specc run SPEC` right after it (same load on the machine),
then compare the estimate the run carried (config.json → summary.json `estimate`) with what it measured:

- wall:  estimate.wall_s  vs summary.json wall_s (first evaluation to summary: what the engine times);
- job:   estimate.total_s vs the `specc run` process' wall time (adds interpreter, imports, model load
         and tokenization).

Runs happen in a temporary working directory; the calibration file goes to --calibrations (default
bench/calibrations/, so the repository's own compile output is untouched). Usage:

    OMP_NUM_THREADS=1 python bench/estimate_accuracy.py [--keep DIR] [SPEC ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPECS = [REPO / "specs" / "quickstart.yaml", REPO / "bench" / "estimate" / "quickstart-wide.yaml"]


def specc(*args: str, cwd: Path, env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds, process) of one `specc` command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", "import sys; from specc.cli import main; sys.argv[0] = 'specc'; main()", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="*", type=Path, default=DEFAULT_SPECS)
    ap.add_argument("--keep", type=Path, help="work here and keep runs/ (default: a temporary directory)")
    ap.add_argument("--calibrations", type=Path, default=REPO / "bench" / "calibrations")
    ap.add_argument("--steps", default="20")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="specc-estimate-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SPECC_CALIBRATIONS=str(args.calibrations.resolve()))
    rows = []
    for spec in args.specs:
        local = work / spec.name
        shutil.copy(spec, local)
        load0 = os.getloadavg()[0]
        _, _, cal = specc("calibrate", local.name, "--steps", args.steps, cwd=work, env=env)
        if cal.returncode != 0:
            sys.exit(f"calibrate {spec} failed:\n{cal.stdout}\n{cal.stderr}")
        job_s, job_cpu, run = specc("run", local.name, "--resume", "never", cwd=work, env=env)
        if run.returncode != 0:
            sys.exit(f"run {spec} failed:\n{run.stdout}\n{run.stderr[-3000:]}")
        exp = next(line.split(":", 1)[1].strip() for line in local.read_text().splitlines() if line.startswith("experiment:"))
        summary = json.loads((work / "runs" / exp / "main" / "summary.json").read_text())
        est = summary.get("estimate") or {}
        load1 = os.getloadavg()[0]
        cal_data = json.loads((args.calibrations / "local-cpu.json").read_text())
        share = cal_data["entries"].get(est.get("shape_key"), {}).get("measured", {}).get("cpu_share")
        rows.append((spec.name, summary["status"], summary["steps"], est.get("source"), est.get("wall_s"),
                     summary["wall_s"], est.get("total_s"), job_s, load0, load1, share, job_cpu / job_s))
        print(f"{spec.name}: estimate wall {est.get('wall_s')} s vs {summary['wall_s']} s; job {est.get('total_s')} s "
              f"vs {job_s:.1f} s (load {load0:.1f} → {load1:.1f}; CPU share calibration {share}, run "
              f"{job_cpu / job_s:.2f})", flush=True)
        specc("report", exp, "--no-plots", cwd=work, env=env)   # records time_accuracy under runs/
        specc("calibrate", "--from-runs", exp, "--calibrations", str(args.calibrations), cwd=work, env=env)
    print()
    print("| spec | status | steps | source | estimated wall | measured wall_s | error | estimated job | measured job "
          "| error | load avg | CPU share cal. / run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, status, steps, source, ew, mw, ej, mj, l0, l1, sc, sr in rows:
        e1 = f"{100 * (ew - mw) / mw:+.1f}%" if ew else "—"
        e2 = f"{100 * (ej - mj) / mj:+.1f}%" if ej else "—"
        print(f"| {name} | {status} | {steps} | {source} | {ew:.1f} s | {mw:.1f} s | {e1} | {ej:.1f} s | {mj:.1f} s | {e2} "
              f"| {l0:.1f} → {l1:.1f} | {sc} / {sr:.2f} |")
    print(f"\n{os.cpu_count()} CPUs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; work dir {work}")


if __name__ == "__main__":
    main()
