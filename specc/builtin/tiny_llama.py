"""The offline quickstart base model: a tiny Llama built and briefly pretrained locally, then cached.

Nothing is downloaded. A small byte-level BPE tokenizer is trained on a generated corpus, and the
model is pretrained on word tasks that are NOT the quickstart task (capitalization), so LoRA has a
real but learnable job. See docs/quickstart-model.md.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from specc.builtin.datasets import random_word

# Bump whenever the recipe below changes: the cache directory name carries it.
MODEL_VERSION = 1
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, "<|system|>", "<|user|>", "<|assistant|>"]
# Every message ends with eos, so a fine-tuned assistant learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VOCAB_SIZE = 2048  # an upper bound: BPE stops once every word form of the corpus is one token
ARCHITECTURE = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0,
)
PRETRAIN = dict(steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup=30, seed=0)


def default_cache_root() -> Path:
    """`${SPECC_CACHE:-~/.cache/specc}/builtin`."""
    return Path(os.environ.get("SPECC_CACHE") or Path.home() / ".cache" / "specc") / "builtin"


def _sentence(rng: random.Random) -> str:
    words = [random_word(rng) for _ in range(rng.randint(3, 8))]
    words = [w.capitalize() if i == 0 or rng.random() < 0.15 else w for i, w in enumerate(words)]
    return " ".join(words) + rng.choice(".?!")


# One-word tasks in the quickstart's "Task: word\n" + "answer" form. Capitalization itself is
# deliberately absent: the base learns to find the word, copy it and change its case the other way.
_TASKS = {
    "Repeat": lambda w: w,
    "Lowercase": lambda w: w.lower(),
}


def pretraining_example(rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) pair of the general pretraining corpus; a plain sentence has no prompt."""
    if rng.random() < 0.2:
        return "", _sentence(rng)
    task = rng.choice(sorted(_TASKS))
    word = random_word(rng)
    word = word.capitalize() if rng.random() < 0.5 else word
    return f"{task}: {word}\n", _TASKS[task](word)


def build_tokenizer(seed: int = 0):
    """Train a byte-level BPE on the generated corpus: every word form becomes one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = ["".join(pretraining_example(rng)) for _ in range(20000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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
    if prompt and rng.random() < 0.2:  # chat form too, so role tokens and the template are trained
        messages = [{"role": "user", "content": prompt.rstrip()}, {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    return tokenizer(prompt + answer + EOS)["input_ids"]


def _packed_batches(tokenizer, rng: random.Random, batch_size: int, seq_len: int):
    """Endless [batch_size, seq_len] rows of concatenated documents (bos ... eos): no padding wasted."""
    import torch

    buf: list[int] = []
    while True:
        while len(buf) < batch_size * seq_len:
            buf += _document_ids(rng, tokenizer)
        rows, buf = buf[:batch_size * seq_len], buf[batch_size * seq_len:]
        yield torch.tensor(rows).view(batch_size, seq_len)


def _pretrain(model, tokenizer, log=None) -> None:
    """Train all parameters briefly with a plain causal-LM loss on the generated corpus."""
    import torch

    cfg = PRETRAIN
    batches = _packed_batches(tokenizer, random.Random(cfg["seed"]), cfg["batch_size"], cfg["seq_len"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg["warmup"]) * max(
        0.05, 1 - s / cfg["steps"]))
    model.train()
    for step in range(cfg["steps"]):
        ids = next(batches)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log and (step % 50 == 0 or step == cfg["steps"] - 1):
            log(f"pretrain step {step}: loss {loss.item():.3f}")
    model.eval()


def build_model(out_dir: Path, log=None) -> None:
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
    tokenizer.save_pretrained(out_dir)


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


def ensure_builtin_model(name: str = "tiny-llama", cache_dir: Path | None = None, log=None) -> Path:
    """Return the cached model directory for a builtin model, building it first if needed."""
    if name != "tiny-llama":
        raise ValueError(f"unknown builtin model {name!r}; known: tiny-llama")
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
            os.rename(tmp, final)
            if log:
                log(f"built {final} in {time.perf_counter() - start:.1f}s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
