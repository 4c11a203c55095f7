"""Benchmark: the torch backend's step time on the quickstart per attention mode, in one process.

The builtin quickstart setup (bench/_common.py: tiny-llama, capitalization, 8 packed rows of 128, 16-token
documents, LoRA r8 on all seven projections), one torch thread. For each round and mode (the order
alternates), a fresh session, 60 prebuilt batches, forward_backward + optimizer_step timed alone; the
median after the first 5 steps. Modes: dense (the [B, 1, T, T] mask), sdpa_varlen (padding-free rows, SDPA
per document, equal-length documents stacked), auto (on the CPU: sdpa_varlen, the dense mask for batches
whose documents average under 64 tokens, as here).

Usage: python bench/attention_modes.py [--rounds 3] [--steps 60]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import builtin_paths, load_str, write_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    import torch
    from rich.console import Console

    from specc.data.batches import BatchStream
    from specc.engine.config import load_run_config
    from specc.engine.loop import RunOptions
    from specc.engine.session import open_session

    torch.set_num_threads(1)
    model_dir, data = builtin_paths()
    root = Path(tempfile.mkdtemp(prefix="specc-bench-attention-"))
    modes = ["dense", "sdpa_varlen", "auto"]
    res: dict[str, list[float]] = {m: [] for m in modes}
    for rnd in range(args.rounds):
        for mode in (modes if rnd % 2 == 0 else modes[::-1]):
            spec = write_spec(root / f"{mode}.yaml", experiment="attention", model_dir=model_dir, data=data,
                              steps=args.steps, model_extra={"attention": mode})
            cfg = replace(load_run_config(spec, None), output_dir=root / "runs" / f"{mode}-{rnd}")
            s = open_session(cfg, RunOptions(resume="never"), Console(file=io.StringIO()))
            stream = BatchStream(s.data.train_plan)
            batches = [next(stream) for _ in range(args.steps)]
            times = []
            for b in batches:
                t0 = time.perf_counter()
                s.backend.forward_backward(b, 1.0 / b.n_target_tokens)
                s.backend.optimizer_step(1e-3)
                times.append(time.perf_counter() - t0)
            res[mode].append(statistics.median(times[5:]))
            print(f"{rnd} {mode:12} {res[mode][-1] * 1e3:6.1f} ms  ({s.backend.describe()['attention']['mode']})  "
                  f"load {load_str()}", flush=True)
    print("\n| mode | median step (per round) |\n|---|---|")
    for mode in modes:
        print(f"| {mode} | {statistics.median(res[mode]) * 1e3:.1f} ms ({', '.join(f'{x * 1e3:.1f}' for x in res[mode])}) |")


if __name__ == "__main__":
    main()
