"""Helpers shared by the training benchmarks in bench/ (not a benchmark itself).

Every benchmark runs its contenders as child processes of one bench script (one process tree),
interleaved A, B, A, B, ... with the same thread count, and reports medians.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# `specc` as a user runs it (the console script calls specc.cli:main, which registers the `run` command).
SPECC = [PYTHON, "-c", "import sys; from specc.cli import main; sys.argv[0] = 'specc'; main()"]


def thread_env(threads: int, **extra: str) -> dict[str, str]:
    """The environment for a child: the same intra-op thread count for every library, no GPU."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env.update(CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def run_child(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float | None = None) -> tuple[int, float]:
    """Run a child to completion, stdout+stderr to `log`; (returncode, wall seconds)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode, time.perf_counter() - t0


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def machine() -> dict[str, object]:
    """CPU model, core count and load, for the README tables."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load": os.getloadavg()}


def load_str() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def median(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def builtin_paths() -> tuple[Path, dict[str, Path]]:
    """(model dir, {split: jsonl}) of the builtin quickstart model and the capitalization dataset, resolved
    once by the parent so every child of a benchmark uses the very same files."""
    from specc.builtin.datasets import resolve_builtin_data
    from specc.builtin.tiny_llama import default_cache_root
    from specc.data.sources import resolve_model_path

    model = resolve_model_path("builtin:tiny-llama")
    data = resolve_builtin_data("builtin:capitalization", default_cache_root() / "data")
    return Path(model), {k: Path(v) for k, v in data.items()}


def write_spec(path: Path, *, experiment: str, model_dir: Path, data: dict[str, Path], steps: int, batch_size: int = 8, grad_accum: int = 1,
               rank: int = 8, alpha: float = 16, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                            "down_proj"),
               lr: float = 2e-3, warmup: int = 20, max_length: int = 128, packing: bool = True,
               eval_every: int | None = None, checkpoint_every: int | None = None, eval_examples: int = 64,
               early_stopping: bool = False, keep_last: int = 2, backend: str = "torch", layers: int | None = None,
               seed: int = 0, model_extra: dict | None = None, size: str = "tiny") -> Path:
    """A one-run spec like specs/quickstart.yaml with the given knobs (absolute model and data paths)."""
    lines = [
        f"experiment: {experiment}",
        "hypothesis:",
        "  statement: benchmark run",
        "model:",
        f"  path: {model_dir}",
        f"  size: {size}",
        "  quantization: none",
        *(f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in (model_extra or {}).items()),
        f"  lora: {{rank: {rank}, alpha: {alpha}, dropout: 0.0, target_modules: [{', '.join(targets)}]"
        + (f", layers: {layers}" if layers is not None else "") + "}",
        "data:",
        f"  train: {data['train']}",
        f"  valid: {data['valid']}",
        "  format: prompt_completion",
        f"  max_length: {max_length}",
        f"  packing: {'true' if packing else 'false'}",
        "training:",
        f"  max_steps: {steps}",
        f"  batch_size: {batch_size}",
        f"  grad_accum: {grad_accum}",
        f"  lr: {lr}",
        f"  seed: {seed}",
        f"  schedule: {{kind: cosine, warmup_steps: {warmup}, min_lr_ratio: 0.1}}",
        f"  eval_every: {eval_every or steps}",
        f"  eval_examples: {eval_examples}",
        f"  checkpoint_every: {checkpoint_every or steps}",
        f"  keep_last: {keep_last}",
        f"  early_stopping: {{enabled: {'true' if early_stopping else 'false'}}}",
        "profile: custom",
        "resources: {cluster: local, partition: debug, cpus: 2, mem: 4G, time: '00:30:00'}",
        f"backend: {backend}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def docs_per_batch(model_dir: Path, train: Path, batch_size: int, max_length: int, packing: bool = True) -> float:
    """Mean number of examples in one of specc's training batches (epoch 0), from specc's own BatchPlan:
    what a padding-only trainer needs as its batch size to see as many examples per step."""
    from specc.data.batches import BatchPlan
    from specc.data.jsonl import load_dataset
    from specc.data.tokenize import pad_token_id, tokenize_split
    from specc.data.sources import load_tokenizer

    tok = load_tokenizer(model_dir)
    examples, _ = load_dataset({"train": train, "valid": None, "test": None}, "prompt_completion")
    seqs, _ = tokenize_split(tok, examples["train"], "prompt_completion", max_length, None)
    plan = BatchPlan(seqs, batch_size=batch_size, max_length=max_length, packing=packing, pad_id=pad_token_id(tok), seed=0)
    rows = plan.rows(0)
    return len(seqs) / plan.batches_per_epoch(0) if rows else 0.0
