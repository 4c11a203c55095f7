"""Benchmark: tokens/s of `specc run` (torch backend, CPU) ÷ Hugging Face `Trainer` + peft.

Same tiny model (builtin:tiny-llama), same data (builtin:capitalization, train split), same batch
size (rows), LoRA config (rank 8, alpha 16, dropout 0, q/k/v/o/gate/up/down), steps, cosine lr
schedule with warmup and a 0.1 floor, AdamW (fused), grad clip 1.0, same thread count. Each side runs
as a child process of this script, interleaved (specc, Trainer, specc, Trainer, ...).

Tokens are non-padding tokens actually processed (prompt + completion):
- specc:   summary.json `tokens` / `train_s`. train_s is the sum of the per-step times the engine
           measures: batch building, forward/backward, optimizer step, metrics line, progress line.
           Excluded: imports, model load, tokenization, the step-0 and final evaluation, the final
           checkpoint/export.
- Trainer: sum of attention_mask over every batch `training_step` received / the time from
           `on_train_begin` to `on_train_end` (a TrainerCallback): the whole training loop, data
           loading and collation included. Excluded: imports, model load, tokenization, Trainer
           construction. (The sum of on_step_begin -> on_step_end times, which leaves out the
           dataloader, is printed too.)

Trainer gets what a user would write: prompt/completion tokenized like specc (bos + prompt +
completion + eos, labels -100 on bos+prompt), DataCollatorForSeq2Seq (pads each batch to its longest
row, labels with -100), no packing, remove_unused_columns=False, report_to=[], no eval,
save_strategy "no", lr_scheduler "cosine_with_min_lr" (min_lr_rate 0.1), optim adamw_torch_fused.

A third contender (unless --no-equal-examples), "trainer-eq", is the same Trainer with as many examples
per step as one of specc's packed batches holds on average: with short examples a packed row holds
several, so "same batch size" (rows) gives specc more examples per step; trainer-eq separates that from
the rest. The order of the contenders rotates every repetition.

Usage: python bench/torch_vs_trainer.py [--steps 150] [--reps 5] [--threads 1] [--batch-size 8]

The Trainer child (`--child trainer`) is also the peer of bench/cpu_midsize.py (`--collator flatten`: HF's
padding-free DataCollatorWithFlattening) and of bench/gpu/run.py (`--device cuda --dtype bfloat16 [--nf4]`).
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


# ----------------------------------------------------------------------------------- Trainer child
def trainer_child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    model_dir = args.model
    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = [json.loads(line) for line in Path(args.train).read_text().splitlines() if line.strip()]
    bos, eos = [tok.bos_token_id], [tok.eos_token_id]
    rows = []
    for ex in examples:
        p = tok(ex["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(ex["completion"], add_special_tokens=False)["input_ids"]
        ids = (bos + p + c + eos)[:args.max_length]
        labels = ([-100] * (1 + len(p)) + c + eos)[:args.max_length]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})

    cuda = args.device == "cuda"
    dtype = getattr(torch, args.dtype)
    load = dict(dtype=dtype, attn_implementation="sdpa")
    if args.nf4:   # NF4, double quantization, bf16 compute; no prepare_model_for_kbit_training (its float32
        from transformers import BitsAndBytesConfig   # upcast of embeddings and head would handicap the peer)

        load.update(quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype),
                    device_map={"": 0 if cuda else "cpu"})
    elif cuda:
        load["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                                             target_modules=list(TARGETS), bias="none", task_type="CAUSAL_LM"))

    class Clock(TrainerCallback):
        def __init__(self):
            self.begin = self.end = None
            self.step_sum = 0.0
            self._t = None

        def on_train_begin(self, a, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_begin(self, a, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.step_sum += time.perf_counter() - self._t

        def on_train_end(self, a, state, control, **kw):
            self.end = time.perf_counter()

    class CountingTrainer(Trainer):
        tokens = 0
        targets = 0
        batches = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            # padded: the attention mask's ones; padding-free (DataCollatorWithFlattening): every token is real
            CountingTrainer.tokens += int(inputs["attention_mask"].sum() if "attention_mask" in inputs
                                          else inputs["input_ids"].numel())
            CountingTrainer.targets += int((inputs["labels"] != -100).sum())
            CountingTrainer.batches += 1
            return super().training_step(model, inputs, num_items_in_batch)

    clock = Clock()
    targs = TrainingArguments(
        output_dir=str(Path(args.out).parent / "trainer_out"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=args.warmup,
        optim="adamw_torch_fused", weight_decay=0.0, max_grad_norm=1.0, seed=0, use_cpu=not cuda,
        bf16=cuda and args.dtype == "bfloat16", remove_unused_columns=False, report_to=[], eval_strategy="no",
        save_strategy="no", logging_steps=50, disable_tqdm=True, dataloader_num_workers=0)
    if args.collator == "flatten":   # HF's padding-free practice: one row per batch, positions restart per example
        from transformers import DataCollatorWithFlattening

        collator = DataCollatorWithFlattening(return_position_ids=True)
        rows = [{k: v for k, v in r.items() if k != "attention_mask"} for r in rows]
    else:
        collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    trainer = CountingTrainer(model=model, args=targs, train_dataset=rows, data_collator=collator, callbacks=[clock])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_setup = time.perf_counter() - t_start
    t0 = time.perf_counter()
    out = trainer.train()
    t_train_call = time.perf_counter() - t0
    result = {"tokens": CountingTrainer.tokens, "targets": CountingTrainer.targets, "batches": CountingTrainer.batches,
              "train_s": clock.end - clock.begin, "step_sum_s": clock.step_sum, "train_call_s": t_train_call,
              "setup_s": t_setup, "final_loss": out.training_loss, "threads": torch.get_num_threads(),
              "collator": args.collator, "device": args.device, "dtype": args.dtype, "nf4": bool(args.nf4)}
    if cuda:
        result.update(peak_mem_mb=torch.cuda.max_memory_allocated() / 2 ** 20,
                      reserved_mb=torch.cuda.max_memory_reserved() / 2 ** 20)
    Path(args.out).write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------------------------------ parent
def run_specc(work: Path, spec: Path, threads: int, log: Path) -> dict:
    rc, wall = run_child([*SPECC, "run", str(spec), "--resume", "never"], work,
                         thread_env(threads), log)
    if rc != 0:
        raise SystemExit(f"specc run failed (rc {rc}):\n{tail(log)}")
    summary = read_json(next(work.glob("runs/*/*/summary.json")))
    return {"tokens": summary["tokens"], "train_s": summary["train_s"], "wall_s": wall, "steps": summary["steps"],
            "threads": summary["device"].get("torch_threads"),
            "packing_efficiency": summary["data"].get("packing_efficiency")}


def run_trainer(work: Path, args, model_dir: Path, train: Path, log: Path, batch_size: int) -> dict:
    out = work / "trainer.json"
    cmd = [PYTHON, str(Path(__file__).resolve()), "--child", "trainer", "--model", str(model_dir), "--train", str(train),
           "--out", str(out), "--steps", str(args.steps), "--threads", str(args.threads),
           "--batch-size", str(batch_size), "--lr", str(args.lr), "--warmup", str(args.warmup),
           "--rank", str(args.rank), "--alpha", str(args.alpha), "--max-length", str(args.max_length)]
    rc, wall = run_child(cmd, work, thread_env(args.threads), log)
    if rc != 0:
        raise SystemExit(f"Trainer child failed (rc {rc}):\n{tail(log)}")
    return dict(read_json(out), wall_s=wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--no-packing", action="store_true", help="specc without packing (padding to the longest row)")
    ap.add_argument("--no-equal-examples", action="store_true",
                    help="skip the third contender: Trainer with as many examples per step as a packed specc batch")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    ap.add_argument("--child", choices=["trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--collator", choices=["seq2seq", "flatten"], default="seq2seq", help=argparse.SUPPRESS)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--nf4", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "trainer":
        return trainer_child(args)

    model_dir, data = builtin_paths()
    root = Path(args.keep or tempfile.mkdtemp(prefix="specc-bench-trainer-"))
    root.mkdir(parents=True, exist_ok=True)
    m = machine()
    print(f"# {m['cpu']}, {m['cores']} cores, threads per contender {args.threads}; "
          f"{args.steps} steps, batch {args.batch_size}, max_length {args.max_length}, "
          f"specc packing {not args.no_packing}; work dir {root}")
    eq_bs = round(docs_per_batch(model_dir, data["train"], args.batch_size, args.max_length, not args.no_packing))
    who_all = ["specc", "trainer"] + ([] if args.no_equal_examples else ["trainer-eq"])
    print(f"# Trainer batch size {args.batch_size} (same rows as specc); trainer-eq: batch size {eq_bs} = the mean "
          f"number of examples in one of specc's packed batches")
    print(f"{'rep':>3} {'who':10} {'tokens':>8} {'train_s':>8} {'tok/s':>9} {'tok/step':>8} {'wall_s':>7}  load")
    res: dict[str, list[dict]] = {w: [] for w in who_all}
    for rep in range(args.reps):
        k = rep % len(who_all)
        order = who_all[k:] + who_all[:k]   # rotate who goes first
        for who in order:
            work = root / f"{who}-{rep}"
            work.mkdir(parents=True, exist_ok=True)
            if who == "specc":
                spec = write_spec(work / "bench.yaml", experiment="bench-trainer", model_dir=model_dir, data=data,
                                  steps=args.steps, batch_size=args.batch_size, rank=args.rank, alpha=args.alpha,
                                  targets=TARGETS, lr=args.lr, warmup=args.warmup, max_length=args.max_length,
                                  packing=not args.no_packing)
                r = run_specc(work, spec, args.threads, work / "log.txt")
            else:
                r = run_trainer(work, args, model_dir, data["train"], work / "log.txt",
                                args.batch_size if who == "trainer" else eq_bs)
            r["tok_s"] = r["tokens"] / r["train_s"]
            res[who].append(r)
            print(f"{rep:>3} {who:10} {r['tokens']:>8} {r['train_s']:>8.2f} {r['tok_s']:>9.1f} "
                  f"{r['tokens'] / args.steps:>8.1f} {r['wall_s']:>7.1f}  {load_str()}", flush=True)
    s_tps = median(r["tok_s"] for r in res["specc"])
    print()
    print("| contender | median tokens/s | median time/step | tokens/step | specc ÷ this (median; per rep) |")
    print("|---|---|---|---|---|")
    labels = {"specc": f"specc run (torch, packing {not args.no_packing}), batch {args.batch_size}",
              "trainer": f"HF Trainer + peft, batch {args.batch_size}",
              "trainer-eq": f"HF Trainer + peft, batch {eq_bs}"}
    for who in who_all:
        rs = res[who]
        tps = median(r["tok_s"] for r in rs)
        step = median(r["train_s"] / args.steps for r in rs)
        extra = ""
        if who != "specc":
            inner = median(r["step_sum_s"] / args.steps for r in rs)
            extra = f" (on_step_begin→end {inner * 1e3:.1f} ms)"
        pairs = ", ".join(f"{a['tok_s'] / b['tok_s']:.2f}" for a, b in zip(res["specc"], rs))
        print(f"| {labels[who]} | {tps:.0f} | {step * 1e3:.1f} ms{extra} | {median(r['tokens'] for r in rs) / args.steps:.0f} | "
              f"{s_tps / tps:.2f}x; {pairs} |")
    print(f"\ntarget: specc ÷ Trainer (same batch size) >= 1.3x; specc packing efficiency "
          f"{res['specc'][0].get('packing_efficiency')}")
    (root / "results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
