"""Benchmark: `specc compile` of a 1,000-run sweep (10 models × 10 ranks × 10 lrs), as a subprocess.

Prints the process wall time of each of `--repeat` runs and their median. Target: < 2 s on the
2-core development machine. Usage: python bench/compile_bench.py [--repeat 3] [--dir /dev/shm] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """\
experiment: bench-1000
hypothesis:
  statement: A 1,000-run sweep compiles in under two seconds.
model:
  path: /models/base
  size: base
  quantization: nf4
data:
  train: /data/train.jsonl
  valid: /data/valid.jsonl
  format: prompt_completion
  samples: 10000
training:
  epochs: 1
  lr: 2.0e-4
  schedule: {{kind: cosine, warmup_steps: 20, min_lr_ratio: 0.1}}
profile: fast
resources:
  cluster: della
  gpus: 1
  cpus: 8
  mem: 64G
  time: "04:00:00"
stages:
  test: {{max_steps: 10, time: "00:15:00"}}
sweep:
  matrix:
    model:
{models}
    model.lora.rank: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    training.lr: [1.0e-5, 2.0e-5, 5.0e-5, 1.0e-4, 2.0e-4, 3.0e-4, 5.0e-4, 1.0e-3, 2.0e-3, 5.0e-3]
  name: "{{model.size}}_r{{model.lora.rank}}_lr{{training.lr}}"
  max_concurrent: 16
"""


def write_spec(directory: Path) -> Path:
    models = "\n".join(f"      - {{path: /models/m{i}, size: m{i}}}" for i in range(10))
    path = directory / "bench-1000.yaml"
    path.write_text(SPEC.format(models=models), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="compile into this directory and keep it")
    ap.add_argument("--dir", type=Path, default=None,
                    help="parent of the temporary directory (default: $TMPDIR); /dev/shm takes the disk out of the figure")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="specc-bench-", dir=args.dir) as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        spec = write_spec(root)
        cmd = [sys.executable, "-m", "specc.cli", "compile", str(spec), "--out", str(root / "generated")]
        times, cpus = [], []
        for i in range(args.repeat):
            # Start from an empty output directory each time: every file is written.
            subprocess.run(["rm", "-rf", str(root / "generated")], check=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=dict(os.environ))
            elapsed = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                sys.exit(f"compile failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
            times.append(elapsed)
            cpus.append(cpu)
            print(f"run {i + 1}: {elapsed:.2f} s wall, {cpu:.2f} s CPU (user + sys)")
        n_files = sum(1 for p in (root / "generated").rglob("*") if p.is_file())
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"specc compile, 1,000-run sweep ({n_files} files): median {statistics.median(times):.2f} s wall, "
              f"{statistics.median(cpus):.2f} s CPU, over {len(times)} runs (target < 2 s wall); "
              f"{os.cpu_count()} CPUs, load average {load:.1f}")


if __name__ == "__main__":
    main()
