"""Benchmark: a mid-size model on the CPU, variable-length data, against HF Trainer + peft padded and padding-free.

The model: a random Llama of about 30M parameters (hidden 512, 7 layers, 8 heads, 4 KV heads, intermediate
1408, a word-level vocabulary of 8,000: tests/tiny_llama.py), LoRA rank 16 / alpha 32 on all seven linear
projections, dropout 0. The data: prompt/completion pairs of random words whose full sequences (bos + prompt +
completion + eos) are 50–500 tokens long, uniform, the prompt 20–60% of it; max_length 512.

Contenders, each a child process of this script, interleaved (the order rotates every repetition), one
intra-op thread each, the same steps, lr, cosine schedule, AdamW (fused), clip 1.0:
- specc (attention auto: on the CPU sdpa_varlen, padding-free rows and per-document SDPA, for documents of
  64 tokens or more on average), packed rows of 512, batch B rows;
- specc with attention dense (the [B, 1, T, T] mask, what specc ran before);
- HF Trainer + peft, DataCollatorForSeq2Seq (each batch padded to its longest row);
- HF Trainer + peft, DataCollatorWithFlattening (padding-free: one row per batch, positions restart per
  example; sdpa, which transformers masks per example from the positions): the peer's best practice.
Both Trainers get as many examples per step as one of specc's packed batches holds on average, so every
contender sees the same tokens per step (on average). Tokens/s counts non-padding tokens (prompt included)
over the training loop (specc: summary.json tokens / train_s; Trainer: on_train_begin → on_train_end).

Usage: python bench/cpu_midsize.py [--steps 16] [--reps 2] [--batch-size 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import (  # noqa: E402
    PYTHON,
    SPECC,
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
ARCH = dict(hidden_size=512, intermediate_size=1408, num_layers=7, num_heads=8, num_kv_heads=4, vocab_size=8000)


def make_inputs(root: Path, n_examples: int, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    from tests.tiny_llama import make_tiny_llama

    model = make_tiny_llama(root / "model", tokenizer="words", std=0.02, max_position_embeddings=1024, **ARCH)
    rng = random.Random(seed)
    vocab = ARCH["vocab_size"]

    def example():
        total = rng.randint(50, 500) - 2                  # bos and eos are added by both sides
        n_prompt = max(1, int(total * rng.uniform(0.2, 0.6)))
        words = [f"w{rng.randrange(vocab)}" for _ in range(total)]
        return {"prompt": " ".join(words[:n_prompt]), "completion": " " + " ".join(words[n_prompt:])}

    data = {}
    for split, n in (("train", n_examples), ("valid", 16)):
        data[split] = root / f"{split}.jsonl"
        data[split].write_text("".join(json.dumps(example()) + "\n" for _ in range(n)))
    return model, data


def params(model: Path) -> int:
    from specc.model_check import param_count

    return param_count(json.loads((model / "config.json").read_text()))


def run_specc(work: Path, spec: Path, threads: int) -> dict:
    rc, wall = run_child([*SPECC, "run", str(spec), "--resume", "never"], work, thread_env(threads), work / "log.txt")
    if rc != 0:
        raise SystemExit(f"specc run failed (rc {rc}):\n{tail(work / 'log.txt')}")
    s = read_json(next(work.glob("runs/*/*/summary.json")))
    return {"tokens": s["tokens"], "train_s": s["train_s"], "wall_s": wall,
            "attention": s["device"]["attention"]["mode"], "packing_efficiency": s["data"]["packing_efficiency"]}


def run_trainer(work: Path, args, model: Path, train: Path, batch: int, collator: str) -> dict:
    out = work / "trainer.json"
    cmd = [PYTHON, str(Path(__file__).resolve().parent / "torch_vs_trainer.py"), "--child", "trainer", "--model",
           str(model), "--train", str(train), "--out", str(out), "--steps", str(args.steps), "--threads",
           str(args.threads), "--batch-size", str(batch), "--lr", str(args.lr), "--warmup", "2", "--rank", "16",
           "--alpha", "32", "--max-length", "512", "--collator", collator]
    rc, wall = run_child(cmd, work, thread_env(args.threads), work / "log.txt")
    if rc != 0:
        raise SystemExit(f"Trainer child failed (rc {rc}):\n{tail(work / 'log.txt')}")
    return dict(read_json(out), wall_s=wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4, help="specc's packed rows of 512 per step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    args = ap.parse_args()

    root = Path(args.keep or tempfile.mkdtemp(prefix="specc-bench-midsize-"))
    root.mkdir(parents=True, exist_ok=True)
    model, data = make_inputs(root, n_examples=max(400, 40 * args.batch_size * (args.steps + 2)))
    eq = round(docs_per_batch(model, data["train"], args.batch_size, 512))
    m = machine()
    print(f"# {m['cpu']}, {m['cores']} cores, {args.threads} thread(s) per contender; model {params(model) / 1e6:.1f}M "
          f"parameters; {args.steps} steps; specc {args.batch_size} packed rows of 512; Trainers {eq} examples per "
          f"step (specc's mean); work dir {root}")
    who_all = ["specc", "specc-dense", "trainer-padded", "trainer-flat"]
    res: dict[str, list[dict]] = {w: [] for w in who_all}
    print(f"{'rep':>3} {'who':15} {'tokens':>8} {'train_s':>8} {'tok/s':>8} {'tok/step':>8}  load")
    for rep in range(args.reps):
        k = rep % len(who_all)
        for who in who_all[k:] + who_all[:k]:
            work = root / f"{who}-{rep}"
            work.mkdir(parents=True, exist_ok=True)
            if who.startswith("specc"):
                extra = {"attention": "dense"} if who == "specc-dense" else {}
                spec = write_spec(work / "bench.yaml", experiment="bench-midsize", model_dir=model, data=data,
                                  steps=args.steps, batch_size=args.batch_size, rank=16, alpha=32, targets=TARGETS,
                                  lr=args.lr, warmup=2, max_length=512, eval_examples=16, model_extra=extra,
                                  size="30M")
                r = run_specc(work, spec, args.threads)
            else:
                r = run_trainer(work, args, model, data["train"], eq, "flatten" if who == "trainer-flat" else "seq2seq")
            r["tok_s"] = r["tokens"] / r["train_s"]
            res[who].append(r)
            print(f"{rep:>3} {who:15} {r['tokens']:>8} {r['train_s']:>8.1f} {r['tok_s']:>8.0f} "
                  f"{r['tokens'] / args.steps:>8.0f}  {load_str()}", flush=True)
    print()
    print("| contender | median tokens/s | tokens/step | specc ÷ this (median; per rep) | specc-dense ÷ this |")
    print("|---|---|---|---|---|")
    base = {w: median(r["tok_s"] for r in res[w]) for w in who_all}
    for who in who_all:
        pairs = ", ".join(f"{a['tok_s'] / b['tok_s']:.2f}" for a, b in zip(res["specc"], res[who]))
        pv = ", ".join(f"{a['tok_s'] / b['tok_s']:.2f}" for a, b in zip(res["specc-dense"], res[who]))
        print(f"| {who} | {base[who]:.0f} | {median(r['tokens'] for r in res[who]) / args.steps:.0f} | "
              f"{base['specc'] / base[who]:.2f}× ({pairs}) | {base['specc-dense'] / base[who]:.2f}× ({pv}) |")
    print(f"\nspecc packing efficiency {res['specc'][0]['packing_efficiency']:.1%}; attention {res['specc'][0]['attention']} "
          f"/ {res['specc-dense'][0]['attention']}")
    (root / "results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
