"""Task scoring speed: specc's evaluation path against the loops people write, in one process, interleaved.

torch:  (a) specc: score_task → TorchBackend.generate (batched, left-padded, KV cache, stop criteria) and the scorer;
        (b) a one-at-a-time loop: `model.generate` per example (what a quick evaluation script does);
        (c) a plain batched `model.generate` with the same batch size and left padding (the best a user writes).
mlx:    (a) specc: score_task → MLXBackend.generate (mlx-lm's BatchGenerator on the LoRA model);
        (b) a loop of `mlx_lm.generate` per example.
Same model (the builtin tiny Llama with a fresh LoRA adapter), same prompts (the quickstart's test split),
greedy, the same max_new_tokens and stop at eos. Each contender runs `--reps` times, alternating; medians of
examples/s and ratios are printed.

    .venv/bin/python bench/eval_speed.py --examples 200 --reps 5 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import _common


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", default="torch,mlx")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from backends import load_backend
    from backends.protocol import LoraSettings, ModelSettings, OptimizerSettings
    from specc.data.jsonl import read_examples
    from specc.data.sources import load_tokenizer
    from specc.evaluate.runner import score_task
    from specc.spec.evaluation import Task

    model_dir, splits = _common.builtin_paths()
    tok = load_tokenizer(model_dir)
    examples = read_examples(splits["test"], "prompt_completion")[:args.examples]
    task = Task(name="capitalize", max_new_tokens=args.max_new, stop=["\n"])
    print(f"machine: {_common.machine()}; {len(examples)} examples, batch {args.batch}, max_new_tokens {args.max_new}, "
          f"threads {args.threads}")

    results: dict[str, list[float]] = {}
    contenders = {}
    for name in args.backends.split(","):
        be = load_backend(name)
        be.setup(ModelSettings(path=model_dir, quantization="none", device="cpu"),
                 LoraSettings(rank=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
                 OptimizerSettings(), seed=0)
        contenders[f"specc {name}"] = (lambda be=be: score_task(be, tok, task, "prompt_completion", examples,
                                                               adapter="bench", context=None, batch_size=args.batch))
        if name == "torch":
            contenders["torch generate, one at a time"] = lambda be=be: _torch_loop(be, tok, examples, args, batch=1)
            contenders["torch generate, batched"] = lambda be=be: _torch_loop(be, tok, examples, args, batch=args.batch)
        else:
            contenders["mlx_lm.generate, one at a time"] = lambda be=be: _mlx_loop(be, tok, examples, args)
    for fn in contenders.values():   # warm-up
        fn()
    for _ in range(args.reps):
        for label, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            results.setdefault(label, []).append(len(examples) / (time.perf_counter() - t0))
    print("\n| contender | median examples/s | per round |\n|---|---|---|")
    for label, xs in results.items():
        print(f"| {label} | {statistics.median(xs):,.1f} | {', '.join(f'{x:.1f}' for x in xs)} |")
    for backend, others in (("torch", ("torch generate, one at a time", "torch generate, batched")),
                            ("mlx", ("mlx_lm.generate, one at a time",))):
        mine = results.get(f"specc {backend}")
        for other in others:
            if mine and other in results:
                ratios = [a / b for a, b in zip(mine, results[other])]
                print(f"specc {backend} ÷ {other}: {statistics.median(ratios):.2f}× (per round "
                      f"{', '.join(f'{r:.2f}' for r in ratios)})")


def _torch_loop(be, tok, examples, args, batch: int) -> list[str]:
    import torch

    from specc.data.tokenize import prompt_token_ids

    ids = prompt_token_ids(tok, [e["prompt"] for e in examples])
    out = []
    be.model.eval()
    with torch.no_grad():
        for k in range(0, len(ids), batch):
            chunk = ids[k:k + batch]
            width = max(map(len, chunk))
            x = torch.full((len(chunk), width), tok.pad_token_id or 0)
            m = torch.zeros_like(x)
            for r, p in enumerate(chunk):
                x[r, width - len(p):], m[r, width - len(p):] = torch.tensor(p), 1
            g = be.model.generate(input_ids=x, attention_mask=m, max_new_tokens=args.max_new, do_sample=False,
                                  pad_token_id=tok.pad_token_id or 0, eos_token_id=tok.eos_token_id, use_cache=True)
            out += [tok.decode(row[width:], skip_special_tokens=True) for row in g.tolist()]
    be.model.train()
    return out


def _mlx_loop(be, tok, examples, args) -> list[str]:
    from mlx_lm import generate

    from specc.data.tokenize import prompt_token_ids

    ids = prompt_token_ids(tok, [e["prompt"] for e in examples])
    be.model.eval()
    out = [generate(be.model, _wrap(tok), prompt=p, max_tokens=args.max_new, verbose=False) for p in ids]
    be.model.train()
    return out


def _wrap(tok):
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return TokenizerWrapper(tok)


if __name__ == "__main__":
    main()
