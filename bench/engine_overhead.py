"""Benchmark: the engine's per-step overhead over a bare loop that calls the same backend.

In one process (torch threads fixed, default 1), for each repetition:
- engine: `open_session` + `train` on the builtin tiny-llama / capitalization quickstart setup with
  eval_every and checkpoint_every beyond the run (so only the step-0 and final evaluation and the
  final checkpoint happen, and they are not in the per-step figures), early stopping off.
- bare:   on the very same Session's backend, `forward_backward(batch, 1/targets)` +
  `optimizer_step(lr)` over batches prebuilt from the same BatchPlan and lrs precomputed from the
  same schedule, and nothing else.
Engine and bare alternate (engine first on even repetitions, bare first on odd ones).

Two figures, both as medians over all steps after the first `--skip` of each segment:
1. time per step: start of one step's first forward_backward to the next one's (the wrapper that
   takes the timestamp is the same for both loops), engine ÷ bare.
2. engine time outside the backend per step (that interval minus the time spent inside
   forward_backward and optimizer_step), ÷ the bare step time. This one is much less sensitive to
   machine load, since it does not subtract two noisy step times.
Target: overhead ≤ 3 %. With --no-tensorboard-variant a third loop runs the engine with its TensorBoard
mirror switched off (a diagnostic). Unless --no-pieces, each per-step piece of the loop is then timed alone.

Usage: python bench/engine_overhead.py [--steps 200] [--reps 8] [--threads 1] [--batch-size 8]
       [--no-tensorboard-variant] [--no-pieces] [--profile]
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
from _common import builtin_paths, load_str, machine, write_spec  # noqa: E402


class Stamps:
    """Wraps backend.forward_backward / optimizer_step (instance attributes) to record call times."""

    def __init__(self, backend):
        self.backend = backend
        self.fb_orig, self.opt_orig = backend.forward_backward, backend.optimizer_step
        self.reset()
        clock = time.perf_counter

        def forward_backward(batch, scale):
            t = clock()
            if self._step_open:
                self.starts.append(t)
                self._step_open = False
            r = self.fb_orig(batch, scale)
            self._acc += clock() - t
            return r

        def optimizer_step(lr):
            t = clock()
            r = self.opt_orig(lr)
            self._acc += clock() - t
            self.inside.append(self._acc)
            self._acc = 0.0
            self._step_open = True
            return r

        backend.forward_backward = forward_backward
        backend.optimizer_step = optimizer_step

    def reset(self):
        self.starts: list[float] = []
        self.inside: list[float] = []   # time inside the backend per step
        self._acc = 0.0
        self._step_open = True

    def per_step(self, skip: int) -> tuple[list[float], list[float]]:
        """(interval per step, time outside the backend per step) for steps skip..n-2."""
        iv = [b - a for a, b in zip(self.starts, self.starts[1:])]
        outside = [i - b for i, b in zip(iv, self.inside)]
        return iv[skip:], outside[skip:]


def pieces(root: Path, base_cfg) -> None:
    """Each per-step piece of the engine loop alone, 300 calls each (median and mean)."""
    import io

    from rich.console import Console

    from specc.data.batches import BatchStream
    from specc.engine.loop import RunOptions
    from specc.engine.metrics import MetricsLog, Progress
    from specc.engine.session import open_session

    cfg = replace(base_cfg, output_dir=root / "runs" / "pieces")
    s = open_session(cfg, RunOptions(resume="never"), Console(file=io.StringIO()))
    rows = []

    def bench(name, fn, n=300):
        ts = []
        for i in range(n):
            t = time.perf_counter()
            fn(i)
            ts.append(time.perf_counter() - t)
        rows.append((name, statistics.median(ts), statistics.mean(ts)))

    stream = BatchStream(s.data.train_plan)
    bench("next(stream): build one packed batch", lambda i: next(stream))
    bench("backend.memory()", lambda i: s.backend.memory())
    log = MetricsLog(root / "runs" / "pieces", None)
    rec = {"step": 1, "loss": 2.0123, "lr": 1e-3, "grad_norm": 0.5, "tokens": 760, "step_s": 0.2, "mem_mb": 480.0}
    bench("metrics.write: JSON line + flush + TensorBoard scalars", lambda i: log.write(dict(rec, step=i)))
    if getattr(log, "_tb", None) is not None and getattr(log._tb, "_writer", None) is not None:
        log._tb._writer.close()
        log._tb._writer = None
        bench("metrics.write without TensorBoard", lambda i: log.write(dict(rec, step=i)))
    log.close()
    progress = Progress(300, Console(file=io.StringIO()))
    bench("progress.update when it prints (every total/50 steps)", lambda i: progress.update(i * 6, 2.0, 2.0, 480.0, 3, None))
    print()
    print("| per-step piece (alone, 300 calls) | median | mean |")
    print("|---|---|---|")
    for name, med, mean in rows:
        print(f"| {name} | {med * 1e3:.3f} ms | {mean * 1e3:.3f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip", type=int, default=5, help="steps dropped at the start of each segment")
    ap.add_argument("--profile", action="store_true", help="cProfile one extra engine segment, print the top")
    ap.add_argument("--no-pieces", action="store_true", help="skip timing the engine's per-step pieces one by one")
    ap.add_argument("--no-tensorboard-variant", action="store_true",
                    help="add a third loop: the engine with its TensorBoard mirror switched off (diagnostic)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rich.console import Console

    from specc.data.batches import BatchStream
    from specc.engine.config import load_run_config
    from specc.engine.loop import RunOptions, train
    from specc.engine.session import open_session
    from specc.plan.schedule import lr as lr_at

    model_dir, data = builtin_paths()
    root = Path(tempfile.mkdtemp(prefix="specc-bench-overhead-"))
    spec = write_spec(root / "bench.yaml", experiment="bench-overhead", model_dir=model_dir, data=data,
                      steps=args.steps, batch_size=args.batch_size, eval_every=10 ** 6, checkpoint_every=10 ** 6)
    base_cfg = load_run_config(spec, None)
    m = machine()
    print(f"# {m['cpu']}, {m['cores']} cores, torch threads {torch.get_num_threads()}; {args.steps} steps per segment, "
          f"batch {args.batch_size}; work dir {root}")
    print(f"{'rep':>3} {'loop':11} {'median ms/step':>14} {'mean ms/step':>12} {'outside backend ms':>18}  load")
    kinds = ["engine", "bare"] + (["engine-notb"] if args.no_tensorboard_variant else [])
    res: dict[str, list[float]] = {}

    def segment(rep: int, which: str, profile: bool = False):
        import specc.engine.metrics as metrics_mod

        cfg = replace(base_cfg, output_dir=root / "runs" / f"{which}-{rep}")
        s = open_session(cfg, RunOptions(resume="never"), Console(file=io.StringIO()))
        stamps = Stamps(s.backend)
        if which.startswith("engine"):
            original = metrics_mod._TensorBoard.__init__
            if which == "engine-notb":   # diagnostic: the engine without its TensorBoard mirror
                def no_writer(self, logdir, resume_step):
                    self._writer = None
                metrics_mod._TensorBoard.__init__ = no_writer
            try:
                if profile:
                    import cProfile
                    import pstats
                    pr = cProfile.Profile()
                    pr.enable()
                    train(s)
                    pr.disable()
                    pstats.Stats(pr).sort_stats("cumulative").print_stats(35)
                    return None
                train(s)   # the step-0 evaluation happens before the first step: in no interval
            finally:
                metrics_mod._TensorBoard.__init__ = original
            return stamps
        stream = BatchStream(s.data.train_plan)
        batches = [next(stream) for _ in range(s.total_steps)]
        scales = [1.0 / (b.n_target_tokens or 1) for b in batches]
        lrs = [lr_at(s.schedule, i) for i in range(s.total_steps)]
        backend = s.backend
        for b, sc, lr in zip(batches, scales, lrs):
            backend.forward_backward(b, sc)
            backend.optimizer_step(lr)
        return stamps

    for rep in range(args.reps):
        k = rep % len(kinds)
        for which in kinds[k:] + kinds[:k]:   # rotate who goes first
            st = segment(rep, which)
            # intervals run from one step start to the next, so the final step (and the final
            # evaluation after it) is in none of them
            iv, outside = st.per_step(args.skip)
            res.setdefault(which, []).append(statistics.median(iv))
            res.setdefault(which + "_mean", []).append(statistics.mean(iv))
            res.setdefault(which + "_outside", []).append(statistics.median(outside))
            print(f"{rep:>3} {which:11} {statistics.median(iv) * 1e3:>14.2f} {statistics.mean(iv) * 1e3:>12.2f} "
                  f"{statistics.median(outside) * 1e3:>18.3f}  {load_str()}", flush=True)
    b = statistics.median(res["bare"])
    bm = statistics.median(res["bare_mean"])
    print()
    print("| loop | median time per step | vs bare: ratio of medians | vs bare: median of per-round ratios (per round) "
          "| mean time per step | time outside the backend per step |")
    print("|---|---|---|---|---|---|")
    print(f"| bare | {b * 1e3:.2f} ms | — | — | {bm * 1e3:.2f} ms | {statistics.median(res['bare_outside']) * 1e3:.3f} ms |")
    for which in kinds:
        if which == "bare":
            continue
        e, em, o = (statistics.median(res[which + x]) for x in ("", "_mean", "_outside"))
        pairs = [x / y - 1 for x, y in zip(res[which], res["bare"])]
        print(f"| {which} | {e * 1e3:.2f} ms | {100 * (e / b - 1):+.2f} % | {100 * statistics.median(pairs):+.2f} % "
              f"({', '.join(f'{100 * p:+.1f}' for p in pairs)}) | {em * 1e3:.2f} ms ({100 * (em / bm - 1):+.2f} %) | "
              f"{o * 1e3:.3f} ms = {100 * o / b:.2f} % of a bare step |")
    print("target: <= 3 %")
    if not args.no_pieces:
        pieces(root, base_cfg)
    if args.profile:
        segment(args.reps, "engine", profile=True)


if __name__ == "__main__":
    main()
