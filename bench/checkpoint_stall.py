"""Benchmark: the checkpoint stall as a share of training time, at the default interval.

Runs `specc run` (torch, CPU, builtin tiny-llama + capitalization, batch 8, packing) as child processes
of this script, for each checkpoint interval given, interleaved, `--reps` times. Every save is timed by
the engine itself: metrics.jsonl has `{"event": "checkpoint", "seconds": ...}` for each one (the whole
`save()`: backend.state() to host, state.safetensors + trainer_state.json, the PEFT adapter export,
fsync of every file and directory, manifest, atomic rename, pruning to keep_last).

share = sum(checkpoint seconds) / (train_s + sum(checkpoint seconds))   (the training loop's time
        without evaluation: the conservative figure); also shown against the process wall time.
Evaluation runs only at the end (eval_every = steps), so it does not dilute the share.
Target: ≤ 1 % at checkpoint_every = 250 (the spec default; the quickstart uses 100).

Usage: python bench/checkpoint_stall.py [--every 250:500 100:300] [--reps 2] [--threads 1]
       (each INTERVAL:STEPS pair is one configuration; STEPS a multiple of INTERVAL)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SPECC, builtin_paths, load_str, machine, median, read_json, run_child, tail, thread_env, write_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", nargs="+", default=["250:500", "100:300"], help="INTERVAL:STEPS pairs")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dir", type=Path, help="work directory (default: a new one under $TMPDIR)")
    args = ap.parse_args()
    configs = [tuple(int(x) for x in e.split(":")) for e in args.every]
    model_dir, data = builtin_paths()
    root = Path(args.dir or tempfile.mkdtemp(prefix="specc-bench-ckpt-"))
    root.mkdir(parents=True, exist_ok=True)
    m = machine()
    print(f"# {m['cpu']}, {m['cores']} cores, torch threads {args.threads}; batch {args.batch_size}; work dir {root}")
    print(f"{'rep':>3} {'every':>5} {'steps':>5} {'saves':>5} {'save s (median)':>15} {'sum save s':>10} "
          f"{'train_s':>8} {'wall_s':>7} {'share loop':>10} {'share wall':>10}  load")
    rows: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for rep in range(args.reps):
        for every, steps in (configs if rep % 2 == 0 else configs[::-1]):
            work = root / f"e{every}-{rep}"
            work.mkdir(parents=True, exist_ok=True)
            spec = write_spec(work / "bench.yaml", experiment="bench-ckpt", model_dir=model_dir, data=data,
                              steps=steps, batch_size=args.batch_size, eval_every=steps, checkpoint_every=every)
            rc, wall = run_child([*SPECC, "run", str(spec), "--resume", "never"], work, thread_env(args.threads),
                                 work / "log.txt")
            if rc != 0:
                raise SystemExit(f"specc run failed (rc {rc}):\n{tail(work / 'log.txt')}")
            run_dir = next(work.glob("runs/*/*/summary.json")).parent
            summary = read_json(run_dir / "summary.json")
            saves = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                     if '"checkpoint"' in line]
            saves = [s["seconds"] for s in saves if s.get("event") == "checkpoint"]
            total = sum(saves)
            r = {"saves": saves, "train_s": summary["train_s"], "wall_s": summary["wall_s"], "proc_wall_s": wall,
                 "share_loop": total / (summary["train_s"] + total), "share_wall": total / summary["wall_s"]}
            rows[(every, steps)].append(r)
            print(f"{rep:>3} {every:>5} {steps:>5} {len(saves):>5} {median(saves):>15.3f} {total:>10.3f} "
                  f"{summary['train_s']:>8.1f} {summary['wall_s']:>7.1f} {100 * r['share_loop']:>9.2f}% "
                  f"{100 * r['share_wall']:>9.2f}%  {load_str()}", flush=True)
    print()
    print("| checkpoint_every | steps | median save | median step | share of loop time | share of wall time |")
    print("|---|---|---|---|---|---|")
    for (every, steps), rs in rows.items():
        print(f"| {every} | {steps} | {median(s for r in rs for s in r['saves']) * 1e3:.0f} ms | "
              f"{median(r['train_s'] / steps for r in rs) * 1e3:.0f} ms | {100 * median(r['share_loop'] for r in rs):.2f} % | "
              f"{100 * median(r['share_wall'] for r in rs):.2f} % |")
    print("target: <= 1 % at the default interval (250)")
    (root / "results.json").write_text(json.dumps({f"{e}:{s}": v for (e, s), v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
