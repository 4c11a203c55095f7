"""The offline quickstart base model: a tiny Llama built and briefly pretrained locally, then cached.

Nothing is downloaded. A small byte-level BPE tokenizer is trained on a generated corpus, and the
model is pretrained on word tasks that are NOT the quickstart task (capitalization), so LoRA has a
real but learnable job. See docs/quickstart-model.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from specc.builtin.datasets import random_word
from specc.errors import UserError

Log = Callable[[str], None]

# Bump whenever the recipe below changes: the cache directory name carries it.
MODEL_VERSION = 1
# Written last, inside the build directory: a cache without it was never finished.
MARKER = "specc-builtin.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, "<|system|>", "<|user|>", "<|assistant|>"]
# Every message ends with eos, so a fine-tuned assistant learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VOCAB_SIZE = 1024  # an upper bound: BPE stops once every word piece of the corpus is one token
ARCHITECTURE = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0,
)
PRETRAIN = dict(steps=400, batch_size=64, lr=5e-3, warmup=30, seed=0)


def default_cache_root() -> Path:
    """`${SPECC_CACHE:-~/.cache/specc}/builtin`."""
    return Path(os.environ.get("SPECC_CACHE") or Path.home() / ".cache" / "specc") / "builtin"


# One-word tasks in the quickstart's "Task:\nword\n" + "answer" form. Capitalization itself is
# deliberately absent: the base learns to find the word, copy it and change its case the other way.
_TASKS = {
    "Repeat": lambda w: w,
    "Lowercase": lambda w: w.lower(),
}


def pretraining_example(rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) pair of the pretraining corpus."""
    task = rng.choice(sorted(_TASKS))
    word = random_word(rng)
    word = word.capitalize() if rng.random() < 0.5 else word
    return f"{task}:\n{word}\n", _TASKS[task](word)


def build_tokenizer(seed: int = 0):
    """Train a small byte-level BPE on the generated corpus (any text still encodes, byte by byte)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = ["".join(pretraining_example(rng)) for _ in range(20000)]
    tok = Tokenizer(models.BPE())
    # The first letter of every word is its own token, so "sun" is [s, un] and "Sun" is [S, un]:
    # changing case is then a 26-letter mapping, not one per word.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\b[A-Za-z]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # all 256 bytes: any text encodes
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, model_max_length=ARCHITECTURE["max_position_embeddings"])


def _document_ids(rng: random.Random, tokenizer) -> list[int]:
    prompt, answer = pretraining_example(rng)
    if rng.random() < 0.2:  # chat form too, so role tokens and the template are trained
        messages = [{"role": "user", "content": prompt.rstrip()}, {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    return tokenizer(prompt + answer + EOS)["input_ids"]


def _batches(tokenizer, rng: random.Random, batch_size: int):
    """Endless padded batches of whole documents; short unpacked rows make the copy easy to find."""
    import torch

    while True:
        docs = [_document_ids(rng, tokenizer) for _ in range(batch_size)]
        width = max(map(len, docs))
        ids = torch.tensor([d + [tokenizer.pad_token_id] * (width - len(d)) for d in docs])
        mask = torch.tensor([[1] * len(d) + [0] * (width - len(d)) for d in docs])
        yield ids, mask, ids.masked_fill(mask == 0, -100)


def _pretrain(model, tokenizer, log: Log | None = None) -> None:
    """Train all parameters briefly with a plain causal-LM loss on the generated corpus."""
    import torch

    cfg = PRETRAIN
    batches = _batches(tokenizer, random.Random(cfg["seed"]), cfg["batch_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01, betas=(0.9, 0.98))
    def warmup_then_linear_decay(step: int) -> float:
        return min(1.0, (step + 1) / cfg["warmup"]) * max(0.05, 1 - step / cfg["steps"])

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_then_linear_decay)
    model.train()
    for step in range(cfg["steps"]):
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log and (step % 50 == 0 or step == cfg["steps"] - 1):
            log(f"pretrain step {step}: loss {loss.item():.3f}")
    model.eval()


def _save_tokenizer(tokenizer, out_dir: Path) -> None:
    """Save with a tokenizer_config.json that transformers 4.x and 5.x, and so mlx_lm, all read."""
    tokenizer.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)  # transformers 5 only: keep one copy
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def build_model(out_dir: Path, log: Log | None = None) -> None:
    """Build, pretrain and save the tiny Llama and its tokenizer into out_dir (HF format)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(PRETRAIN["seed"])
    config = LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **ARCHITECTURE)
    torch.manual_seed(PRETRAIN["seed"])
    model = LlamaForCausalLM(config)
    # One thread: these matmuls are too small to gain from more, extra OpenMP threads crawl on a busy
    # machine, and a fixed reduction order makes the weights independent of the core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _pretrain(model, tokenizer, log)
    finally:
        torch.set_num_threads(threads)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    _save_tokenizer(tokenizer, Path(out_dir))


def is_complete(model_dir: Path) -> bool:
    """True when model_dir holds every file a loader needs (a half-written cache never is)."""
    return all((Path(model_dir) / f).is_file() and (Path(model_dir) / f).stat().st_size > 0 for f in REQUIRED_FILES)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an advisory lock so concurrent callers build once and the others wait."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the atomic rename below still keeps the cache sound
        yield
        return
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_builtin_model(name: str = "tiny-llama", cache_dir: Path | None = None, log: Log | None = None) -> Path:
    """Return the cached model directory for a builtin model, building it first if needed."""
    if name != "tiny-llama":
        raise UserError(f"unknown builtin model {name!r}", hint="known: tiny-llama")
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    final = root / f"{name}-v{MODEL_VERSION}"
    if is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{final.name}.lock"):
        if is_complete(final):  # another process built it while we waited
            return final
        shutil.rmtree(final, ignore_errors=True)  # damaged: never reuse a partial directory
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            start = time.perf_counter()
            build_model(tmp, log)
            seconds = round(time.perf_counter() - start, 1)
            recipe = dict(name=name, version=MODEL_VERSION, architecture=ARCHITECTURE, pretrain=PRETRAIN)
            (tmp / MARKER).write_text(json.dumps({**recipe, "build_seconds": seconds}, indent=2) + "\n")
            os.rename(tmp, final)
            if log:
                log(f"built {final} in {seconds}s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
