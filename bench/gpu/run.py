"""The GPU benchmark behind bench/gpu/run.sh: one call on one CUDA GPU, results as JSON under $OUT.

1. The gpu-marked tests (tests/backends/test_torch_cuda.py): bf16 and NF4 steps, packed attention against
   the dense mask, bit-exact resume for the same kernels, Liger and compile against the plain path, NVML.
2. A randomly initialised model of Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads,
   intermediate 8192, vocabulary 128,256, tied embeddings; bf16 safetensors), a word-level tokenizer of that
   vocabulary, and prompt/completion data of random words, 100–3,000 tokens per example.
3. `specc run` packed to 2,048 and to 4,096 tokens per row, 16,384 tokens per step, LoRA r16 / alpha 32 on
   all seven linear projections, bf16 then NF4 (double quantization, bf16 compute); then, as time allows,
   the bf16 2,048 shape with attention dense and flex, with Liger, and compiled.
4. The peer on the same GPU, data, examples per step (specc's mean), steps, LoRA, lr and schedule: HF Trainer
   + peft (+ bitsandbytes NF4) with DataCollatorWithFlattening (padding-free) and sdpa, bf16 autocast
   (bench/torch_vs_trainer.py --child trainer --device cuda).
5. The memory plan (specc/estimate/memory.py) of every specc run against its measured peak.

Figures: tokens/s = non-padding tokens / the training loop's time (specc: summary.json tokens / train_s, every
step; Trainer: on_train_begin → on_train_end), and specc's steady rate after the first 5 steps. MFU = tokens/s ×
FLOPs per token / the GPU's dense bf16 peak, FLOPs per token = 4 N (N: the decoder's linear weights and the
LM head; forward 2N plus backward to the inputs 2N, the frozen base gets no weight gradients; the LoRA
matmuls are left out) + 12 · layers · hidden · s̄ for attention (s̄: the mean number of keys a query attends,
measured on the packed data; forward 4, backward 8). Everything is written to $OUT/results.json as it comes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _common import PYTHON, SPECC, docs_per_batch, read_json, tail, write_spec  # noqa: E402

OUT = Path(os.environ.get("OUT") or "/tmp/specc-gpu-out")
WORK = Path(os.environ.get("SPECC_GPU_WORK") or "/tmp/specc-gpu-work")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                max_position_embeddings=8192, rms_norm_eps=1e-5)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "B200": 2250e12, "L40S": 362e12}   # dense, SXM
STEP_TOKENS = 16384
LENGTHS = (100, 3000)          # tokens per example (bos + prompt + completion + eos), uniform
DEVICE = "cuda"
LR = 2e-4


class Results(dict):
    def save(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(self, indent=2, default=str))


def env() -> dict[str, str]:
    e = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
             PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (e.get("PYTHONPATH"), str(REPO)) if p)
    return e


def sh(cmd: list[str], cwd: Path, log: Path, timeout: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=cwd, env=env(), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - t0


def versions() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU)",
           "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1024 ** 3, 1) if cuda else None}
    for mod in ("peft", "bitsandbytes", "accelerate", "triton", "liger_kernel", "pynvml"):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception as exc:
            out[mod] = f"unavailable ({type(exc).__name__})"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        out["varlen_attn"] = True
    except ImportError:
        out["varlen_attn"] = False
    return out


def run_tests(res: Results, timeout: float) -> None:
    log = OUT / "gpu_tests.log"
    rc, wall = sh([PYTHON, "-m", "pytest", "-q", "-m", "gpu", "tests/backends/test_torch_cuda.py", "-rA", "-p",
                   "no:cacheprovider", f"--junitxml={OUT / 'gpu_tests.xml'}"], REPO, log, timeout)
    res["tests"] = {"rc": rc, "wall_s": round(wall, 1), "summary": tail(log, 40)}
    res.save()


def build_inputs(n_examples: int) -> tuple[Path, dict[str, Path]]:
    import torch
    import transformers

    from tests.tiny_llama import _write_word_tokenizer

    model_dir = WORK / "llama-1b-shape"
    if not (model_dir / "model.safetensors").exists():
        cfg = transformers.LlamaConfig(**LLAMA_1B, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        torch.manual_seed(0)
        with torch.device(DEVICE):
            model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(model_dir, safe_serialization=True)
        del model
        torch.cuda.empty_cache()
        _write_word_tokenizer(model_dir, LLAMA_1B["vocab_size"])
        tc = json.loads((model_dir / "tokenizer_config.json").read_text())
        (model_dir / "tokenizer_config.json").write_text(json.dumps(dict(tc, model_max_length=8192)))
    rng = random.Random(0)
    words = LLAMA_1B["vocab_size"] - 8

    def example():
        total = rng.randint(*LENGTHS) - 2
        k = max(1, int(total * rng.uniform(0.2, 0.6)))
        ws = [f"w{rng.randrange(words)}" for _ in range(total)]
        return {"prompt": " ".join(ws[:k]), "completion": " " + " ".join(ws[k:])}

    data = {}
    for split, n in (("train", n_examples), ("valid", 8)):
        data[split] = WORK / f"{split}.jsonl"
        data[split].write_text("".join(json.dumps(example()) + "\n" for _ in range(n)))
    return model_dir, data


def mean_keys(model_dir: Path, train: Path, max_length: int) -> float:
    """s̄: keys per query in causal attention within each document, over the tokens of the packed data."""
    from specc.data.jsonl import load_dataset
    from specc.data.sources import load_tokenizer
    from specc.data.tokenize import tokenize_split

    examples, _ = load_dataset({"train": train, "valid": None, "test": None}, "prompt_completion")
    seqs, _ = tokenize_split(load_tokenizer(model_dir), examples["train"][:400], "prompt_completion", max_length, None)
    lengths = [len(s) for s in seqs]
    return sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)


def flops_per_token(s_bar: float) -> float:
    a = LLAMA_1B
    h, i, L = a["hidden_size"], a["intermediate_size"], a["num_hidden_layers"]
    q, kv = a["num_attention_heads"] * a["head_dim"], a["num_key_value_heads"] * a["head_dim"]
    n = L * (2 * h * q + 2 * h * kv + 3 * h * i) + a["vocab_size"] * h
    return 4 * n + 12 * L * h * s_bar


def specc_run(name: str, model_dir: Path, data: dict, max_length: int, quant: str, steps: int, timeout: float,
              **model_extra) -> dict:
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    spec = write_spec(work / "spec.yaml", experiment="gpu-bench", model_dir=model_dir, data=data, steps=steps,
                      batch_size=STEP_TOKENS // max_length, rank=16, alpha=32, targets=TARGETS, lr=LR, warmup=2,
                      max_length=max_length, eval_examples=8, model_extra=model_extra, size="1B")
    spec.write_text(spec.read_text().replace("quantization: none", f"quantization: {quant}"))
    rc, wall = sh([*SPECC, "run", str(spec), "--resume", "never"], work, work / "log.txt", timeout)
    out = {"name": name, "rc": rc, "process_s": round(wall, 1), "max_length": max_length, "quantization": quant,
           **model_extra}
    summaries = list(work.glob("runs/*/*/summary.json"))
    if rc != 0 or not summaries:
        out["error"] = tail(work / "log.txt", 30)
        return out
    s = read_json(summaries[0])
    run_dir = summaries[0].parent
    steps_ = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    steady = steps_[5:] or steps_

    def most(key):
        values = [r[key] for r in steps_ if isinstance(r.get(key), (int, float))]
        return max(values) if values else None

    util = [r["gpu_util"] for r in steady if isinstance(r.get("gpu_util"), (int, float))]
    out.update(tokens=s["tokens"], train_s=s["train_s"], tokens_per_s=s["tokens"] / s["train_s"],
               steady_tokens_per_s=sum(r["tokens"] for r in steady) / sum(r["step_s"] for r in steady),
               peak_mem_mb=s["peak_mem_mb"], reserved_mb=most("cuda_reserved_mb"), device_mb=most("gpu_mem_mb"),
               gpu_util_median=statistics.median(util) if util else None, device=s["device"],
               packing_efficiency=s["data"]["packing_efficiency"], final_loss=s["final_loss"],
               config=str(run_dir / "config.json"))
    return out


def peer_run(name: str, model_dir: Path, train: Path, max_length: int, nf4: bool, steps: int, timeout: float) -> dict:
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    batch = max(1, round(docs_per_batch(model_dir, train, STEP_TOKENS // max_length, max_length)))
    cmd = [PYTHON, str(REPO / "bench" / "torch_vs_trainer.py"), "--child", "trainer", "--model", str(model_dir),
           "--train", str(train), "--out", str(work / "trainer.json"), "--steps", str(steps), "--threads", "8",
           "--batch-size", str(batch), "--lr", str(LR), "--warmup", "2", "--rank", "16", "--alpha", "32",
           "--max-length", str(max_length), "--collator", "flatten", "--device", DEVICE,
           "--dtype", "bfloat16" if DEVICE == "cuda" else "float32",
           *(["--nf4"] if nf4 else [])]
    rc, wall = sh(cmd, work, work / "log.txt", timeout)
    out = {"name": name, "rc": rc, "process_s": round(wall, 1), "max_length": max_length, "nf4": nf4,
           "examples_per_step": batch}
    if rc != 0 or not (work / "trainer.json").exists():
        out["error"] = tail(work / "log.txt", 30)
        return out
    r = read_json(work / "trainer.json")
    out.update(r, tokens_per_s=r["tokens"] / r["train_s"])
    return out


def memory_check(run: dict, model_dir: Path) -> dict:
    from specc.estimate.memory import Arch, estimate_memory

    arch = Arch.from_config(json.loads((model_dir / "config.json").read_text()))
    est = estimate_memory(json.loads(Path(run["config"]).read_text()), arch)
    out = {"predicted_peak_mb": round(est.peak_mb), "measured_peak_mb": run["peak_mem_mb"],
           "peak_error": run["peak_mem_mb"] / est.peak_mb - 1, "predicted_device_mb": round(est.device_mb),
           "parts_mb": {k: round(v) for k, v in est.parts.items()}}
    if run.get("device_mb"):
        out.update(measured_device_mb=run["device_mb"], device_error=run["device_mb"] / est.device_mb - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=470)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-tests", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="the plumbing on the CPU: a 4-layer, 256-wide model of the same kind, 1,024-token steps")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.smoke:
        global DEVICE, STEP_TOKENS, LENGTHS, WORK
        DEVICE, STEP_TOKENS, LENGTHS, WORK = "cpu", 1024, (20, 600), WORK.with_name(WORK.name + "-smoke")
        LLAMA_1B.update(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=4096)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t0)

    WORK.mkdir(parents=True, exist_ok=True)
    res = Results(versions=versions(), budget_s=args.budget_s, steps=args.steps, step_tokens=STEP_TOKENS, runs=[])
    res.save()
    if not args.no_tests:
        run_tests(res, timeout=min(170, left() - 240))
    model_dir, data = build_inputs(n_examples=64 + 2 * args.steps * STEP_TOKENS // (sum(LENGTHS) // 2))
    gpu = res["versions"]["gpu"]
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    res["peak_bf16_flops"] = peak
    lengths = (2048, 4096) if not args.smoke else (256, 512)
    s_bar = {L: mean_keys(model_dir, data["train"], L) for L in lengths}
    res["flops_per_token"] = {L: flops_per_token(s) for L, s in s_bar.items()}
    res["mean_keys_per_query"] = s_bar
    res.save()
    short, long_ = lengths
    plan = [("specc", "bf16", 2048, {}), ("peer", "bf16", 2048, {}), ("specc", "nf4", 2048, {}),
            ("peer", "nf4", 2048, {}), ("specc", "bf16", 4096, {}), ("peer", "bf16", 4096, {}),
            ("specc", "nf4", 4096, {}), ("peer", "nf4", 4096, {}),
            ("specc", "bf16", 2048, {"attention": "dense"}), ("specc", "bf16", 2048, {"attention": "flex"}),
            ("specc", "bf16", 2048, {"liger": True}), ("specc", "bf16", 2048, {"compile": True})]
    plan = [(w, q, {2048: short, 4096: long_}[L], x) for w, q, L, x in plan]
    if args.smoke:   # no Liger (Triton), no flex training, no NF4 compile on the CPU
        plan = [p for p in plan if not ({"liger", "compile"} & set(p[3]) or p[3].get("attention") == "flex")]
    for who, quant, L, extra in plan:
        name = f"{who}-{quant}-{L}" + "".join(f"-{k}={v}" for k, v in extra.items())
        if left() < 45:
            res["runs"].append({"name": name, "skipped": f"time budget ({left():.0f} s left)"})
            res.save()
            continue
        timeout = min(150, left() - 10)
        if who == "specc":
            r = specc_run(name, model_dir, data, L, "nf4" if quant == "nf4" else "none", args.steps, timeout, **extra)
            if "peak_mem_mb" in r:
                r["memory_plan"] = memory_check(r, model_dir)
        else:
            r = peer_run(name, model_dir, data["train"], L, quant == "nf4", args.steps, timeout)
        if peak and r.get("tokens_per_s"):
            r["mfu"] = r["tokens_per_s"] * res["flops_per_token"][L] / peak
            if r.get("steady_tokens_per_s"):
                r["steady_mfu"] = r["steady_tokens_per_s"] * res["flops_per_token"][L] / peak
        res["runs"].append(r)
        res.save()
        print(json.dumps({k: r.get(k) for k in ("name", "rc", "tokens_per_s", "steady_tokens_per_s", "mfu",
                                                "peak_mem_mb", "process_s", "skipped", "error")}), flush=True)
    by = {r["name"]: r for r in res["runs"]}
    res["ratios"] = {f"{q}-{L}": (by.get(f"specc-{q}-{L}", {}).get("tokens_per_s") or 0)
                     / by[f"peer-{q}-{L}"]["tokens_per_s"]
                     for q in ("bf16", "nf4") for L in lengths if by.get(f"peer-{q}-{L}", {}).get("tokens_per_s")}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res.save()
    print(json.dumps({"ratios": res["ratios"], "wall_s": res["wall_s"]}))


if __name__ == "__main__":
    main()
