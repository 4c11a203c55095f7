"""Benchmark: tokens/s of `specc run --backend mlx` ÷ `mlx_lm lora` (mlx[cpu] on Linux, or Apple silicon).

Same tiny model directory (builtin:tiny-llama), same data (the builtin capitalization dataset's
directory, which already holds train.jsonl / valid.jsonl in prompt/completion format), same batch size
(rows), LoRA on the same 7 projections of every layer with rank 8 and scale alpha/rank = 2.0, steps,
AdamW (weight decay 0) with lr 2e-3, 20 warmup steps and cosine decay to 0.1 x. Each side runs as a
child process of this script, interleaved, same thread settings. Differences that are each tool's
own: specc clips gradients at norm 1.0 (mlx-lm does not clip); mlx-lm renders prompt/completion through
the tokenizer's chat template (a few role tokens more per example) and compiles its step with
mx.compile; specc packs rows (mlx-lm pads each batch to 1 + a multiple of 32).

Tokens are non-padding tokens processed:
- specc:  summary.json `tokens` / `train_s` (per-step time: batch building, forward/backward, update,
          metrics; not model load, evaluation or checkpoints).
- mlx-lm: the child runs mlx-lm's own `lora` entry point (`python -m mlx_lm lora -c config.yaml`,
          in-process so that it can count): the real length of every training batch row that
          mlx-lm's iterate_batches yields (its `lengths`, i.e. without padding), divided by mlx-lm's
          own training time (the sum of its per-report windows: step + mx.eval, without evaluation;
          recovered exactly from each report's tokens_sec and window token count). mlx-lm's own
          "Tokens/sec" counts only the loss-masked tokens (with mask_prompt: the completion), so it
          is printed too but not used for the ratio. Also shown: train() wall time minus evaluation.
A first untimed round warms MLX's on-disk CPU kernel cache (/tmp/mlx/...) for everyone. A third
contender (unless --no-equal-examples), "mlx_lm-eq", is mlx_lm with as many examples per step as one of
specc's packed batches holds on average. The order of the contenders rotates every repetition.

Usage: python bench/mlx_vs_mlxlm.py [--steps 40] [--reps 4] [--threads 1] [--batch-size 4]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    PYTHON,
    SPECC,
    builtin_paths,
    docs_per_batch,
    load_str,
    machine,
    median,
    read_json,
    run_child,
    tail,
    thread_env,
    write_spec,
)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLX_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


# ------------------------------------------------------------------------------------ mlx-lm child
def mlxlm_child(args) -> None:
    import mlx_lm.cli_ui as cli_ui
    import mlx_lm.lora as lora
    import mlx_lm.tuner.trainer as trainer

    counts = {"tokens": 0, "rows": 0, "padded": 0, "batches": 0}
    reports: list[tuple[int, float, float]] = []   # (iteration, tokens_sec, trained_tokens)
    timing = {"eval_s": 0.0, "train_call_s": 0.0}
    orig_iter, orig_eval, orig_train = trainer.iterate_batches, trainer.evaluate, lora.train
    orig_report = cli_ui.TrainUI.report_train

    def counting_iterate_batches(*a, **kw):
        loop = kw.get("loop", False)
        for batch, lengths in orig_iter(*a, **kw):
            if loop:   # training batches only (evaluation iterates without loop)
                lens = [int(x) for x in lengths[:, 1].tolist()]
                counts["tokens"] += sum(lens)
                counts["rows"] += len(lens)
                counts["padded"] += int(batch.shape[0] * batch.shape[1])
                counts["batches"] += 1
            yield batch, lengths

    def timed_evaluate(*a, **kw):
        t = time.perf_counter()
        try:
            return orig_eval(*a, **kw)
        finally:
            timing["eval_s"] += time.perf_counter() - t

    def timed_train(*a, **kw):
        kw.setdefault("iterate_batches", counting_iterate_batches)
        t = time.perf_counter()
        try:
            return orig_train(*a, **kw)
        finally:
            timing["train_call_s"] += time.perf_counter() - t

    def report_train(self, it, train_loss, tokens_sec, trained_tokens):
        reports.append((it, float(tokens_sec), float(trained_tokens)))
        return orig_report(self, it, train_loss, tokens_sec, trained_tokens)

    trainer.evaluate = timed_evaluate
    lora.train = timed_train
    cli_ui.TrainUI.report_train = report_train
    sys.argv = ["mlx_lm.lora", "-c", args.config]
    lora.main()
    train_s, prev = 0.0, 0.0
    for _, tps, cum in reports:
        train_s += (cum - prev) / tps
        prev = cum
    out = dict(counts, mlx_target_tokens=prev, train_s=train_s, mlx_tokens_per_s=prev / train_s if train_s else None,
               train_call_minus_eval_s=timing["train_call_s"] - timing["eval_s"], eval_s=timing["eval_s"],
               reports=len(reports))
    Path(args.out).write_text(json.dumps(out, indent=2))


def mlxlm_config(path: Path, *, model_dir: Path, data_dir: Path, adapters: Path, steps: int, batch_size: int, lr: float,
                 warmup: int, rank: int, alpha: float, layers: int, max_length: int) -> Path:
    cfg = {
        "model": str(model_dir), "train": True, "data": str(data_dir), "fine_tune_type": "lora",
        "optimizer": "adamw", "optimizer_config": {"adamw": {"weight_decay": 0.0}}, "seed": 0,
        "num_layers": layers, "batch_size": batch_size, "iters": steps, "val_batches": 1,
        "learning_rate": lr, "steps_per_report": min(10, steps), "steps_per_eval": 10 ** 6, "save_every": 10 ** 6,
        "adapter_path": str(adapters), "max_seq_length": max_length, "mask_prompt": True, "grad_checkpoint": False,
        "lr_schedule": {"name": "cosine_decay", "arguments": [lr, steps - warmup, lr * 0.1], "warmup": warmup},
        "lora_parameters": {"rank": rank, "scale": alpha / rank, "dropout": 0.0, "keys": MLX_KEYS},
    }
    path.write_text(json.dumps(cfg, indent=2))   # JSON is YAML
    return path


# ------------------------------------------------------------------------------------------ parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--no-warmup-pair", action="store_true", help="skip the untimed first round")
    ap.add_argument("--no-equal-examples", action="store_true",
                    help="skip the third contender: mlx_lm with as many examples per step as a packed specc batch")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    ap.add_argument("--child", choices=["mlxlm"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "mlxlm":
        return mlxlm_child(args)

    model_dir, data = builtin_paths()
    data_dir = data["train"].parent
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    root = Path(args.keep or tempfile.mkdtemp(prefix="specc-bench-mlx-"))
    root.mkdir(parents=True, exist_ok=True)
    m = machine()
    print(f"# {m['cpu']}, {m['cores']} cores, OMP/BLAS threads {args.threads}; {args.steps} steps, batch "
          f"{args.batch_size}, max_length {args.max_length}; work dir {root}")
    eq_bs = round(docs_per_batch(model_dir, data["train"], args.batch_size, args.max_length))
    who_all = ["specc", "mlx_lm"] + ([] if args.no_equal_examples else ["mlx_lm-eq"])
    print(f"# mlx_lm batch size {args.batch_size} (same rows as specc); mlx_lm-eq: batch size {eq_bs} = the mean number "
          f"of examples in one of specc's packed batches")
    print(f"{'rep':>3} {'who':9} {'tokens':>7} {'train_s':>8} {'tok/s':>8} {'tok/step':>8} {'wall_s':>7}  notes")
    res: dict[str, list[dict]] = {w: [] for w in who_all}
    reps = [-1] * (not args.no_warmup_pair) + list(range(args.reps))
    for rep in reps:
        k = max(rep, 0) % len(who_all)
        order = who_all[k:] + who_all[:k]   # rotate who goes first
        for who in order:
            work = root / f"{who}-{rep if rep >= 0 else 'warm'}"
            work.mkdir(parents=True, exist_ok=True)
            env = thread_env(args.threads)
            if who == "specc":
                spec = write_spec(work / "bench.yaml", experiment="bench-mlx", model_dir=model_dir, data=data,
                                  steps=args.steps, batch_size=args.batch_size, rank=args.rank, alpha=args.alpha,
                                  targets=TARGETS, lr=args.lr, warmup=args.warmup, max_length=args.max_length,
                                  eval_examples=8, backend="mlx")
                rc, wall = run_child([*SPECC, "run", str(spec), "--backend", "mlx", "--resume", "never"], work, env,
                                     work / "log.txt")
                if rc != 0:
                    raise SystemExit(f"specc run --backend mlx failed (rc {rc}):\n{tail(work / 'log.txt')}")
                s = read_json(next(work.glob("runs/*/*/summary.json")))
                r = {"tokens": s["tokens"], "train_s": s["train_s"], "wall_s": wall, "backend": s["backend"],
                     "note": f"backend {s['backend']}, packing eff. {s['data'].get('packing_efficiency') or 0:.2f}"}
            else:
                cfg = mlxlm_config(work / "config.yaml", model_dir=model_dir, data_dir=data_dir, adapters=work / "adapters",
                                   steps=args.steps, batch_size=args.batch_size if who == "mlx_lm" else eq_bs,
                                   lr=args.lr, warmup=args.warmup, rank=args.rank, alpha=args.alpha, layers=layers,
                                   max_length=args.max_length)
                out = work / "mlxlm.json"
                rc, wall = run_child([PYTHON, str(Path(__file__).resolve()), "--child", "mlxlm", "--config", str(cfg),
                                      "--out", str(out)], work, env, work / "log.txt")
                if rc != 0:
                    raise SystemExit(f"mlx_lm lora failed (rc {rc}):\n{tail(work / 'log.txt')}")
                r = dict(read_json(out), wall_s=wall)
                r["note"] = (f"mlx-lm's own Tokens/sec {r['mlx_tokens_per_s']:.0f} (targets only); train() - eval "
                             f"{r['train_call_minus_eval_s']:.1f} s; padding {1 - r['tokens'] / r['padded']:.0%}")
            r["tok_s"] = r["tokens"] / r["train_s"]
            if rep >= 0:
                res[who].append(r)
            print(f"{rep if rep >= 0 else 'w':>3} {who:9} {r['tokens']:>7} {r['train_s']:>8.2f} {r['tok_s']:>8.1f} "
                  f"{r['tokens'] / args.steps:>8.1f} {r['wall_s']:>7.1f}  {r['note']}; load {load_str()}", flush=True)
    s_tps = median(r["tok_s"] for r in res["specc"])
    print()
    print("| contender | median tokens/s | median time/step | tokens/step | specc ÷ this (median; per rep) |")
    print("|---|---|---|---|---|")
    labels = {"specc": f"specc run --backend mlx, batch {args.batch_size}", "mlx_lm": f"mlx_lm lora, batch {args.batch_size}",
              "mlx_lm-eq": f"mlx_lm lora, batch {eq_bs}"}
    for who in who_all:
        rs = res[who]
        tps = median(r["tok_s"] for r in rs)
        pairs = ", ".join(f"{a['tok_s'] / b['tok_s']:.2f}" for a, b in zip(res["specc"], rs))
        print(f"| {labels[who]} | {tps:.1f} | {median(r['train_s'] for r in rs) / args.steps * 1e3:.0f} ms | "
              f"{median(r['tokens'] for r in rs) / args.steps:.0f} | {s_tps / tps:.2f}x; {pairs} |")
    print("\ntarget: specc ÷ mlx_lm (same batch size) >= 1.2x")
    (root / "results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
