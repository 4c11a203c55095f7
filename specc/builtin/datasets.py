"""Built-in synthetic datasets, generated locally and deterministically (no download).

`builtin:capitalization` is the quickstart task: capitalize the first letter of every word.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Bump when the generated text changes, so stale caches are not reused.
DATA_VERSION = 1
SPLITS = ("train", "valid", "test")

# A closed vocabulary: the builtin tokenizer learns every casing of these as single tokens, which is
# what lets a tiny model learn the task quickly (see docs/quickstart-model.md).
WORDS = """
apple bird black blue boat book box bread bright brown cake calm car cat chair city clean clock cloud
cold cup dark day deep desk dog door dream dry early earth east egg fast field fire fish flower fog
forest fox fresh friend garden girl glass gold green happy hat hill home horse house ice king lake
lamp leaf light lion long love map milk moon morning mother mountain music night north old orange
paper park pen pink plant queen quick quiet rain red river road rock round salt sand sea ship shoe
silver sky slow small snow soft song south star stone storm street summer sun sweet table tall tea
tiger tower town train tree violet warm water west white wind window winter wolf wood yellow young
""".split()


def random_phrase(rng: random.Random, min_words: int = 1, max_words: int = 6) -> list[str]:
    """A list of random lowercase words from WORDS."""
    return [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]


def capitalization_example(rng: random.Random) -> dict[str, str]:
    """One quickstart example: capitalize the first letter of every word."""
    words = random_phrase(rng)
    return {"prompt": f"Capitalize:\n{' '.join(words)}\n", "completion": " ".join(w.capitalize() for w in words)}


@dataclass(frozen=True)
class BuiltinDataset:
    description: str
    format: str                                    # the engine's data format name
    make_example: Callable[[random.Random], dict[str, str]]
    sizes: dict[str, int]                          # examples per split


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "capitalization": BuiltinDataset(
        description="Capitalize the first letter of every word (1-6 common English words).",
        format="prompt_completion",
        make_example=capitalization_example,
        sizes={"train": 2000, "valid": 200, "test": 200},
    ),
}


def _lookup(name: str) -> BuiltinDataset:
    try:
        return BUILTIN_DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown builtin dataset {name!r}; known: {', '.join(sorted(BUILTIN_DATASETS))}") from None


def generate(name: str, out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write train/valid/test JSONL for a builtin dataset into out_dir; returns split -> path."""
    spec = _lookup(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One generator for all splits, so splits never overlap by construction of the stream order.
    rng = random.Random(f"{name}:{seed}")
    paths = {}
    for split in SPLITS:
        path = paths[split] = out_dir / f"{split}.jsonl"
        lines = [json.dumps(spec.make_example(rng), ensure_ascii=False, sort_keys=True) for _ in range(spec.sizes[split])]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def resolve_builtin_data(uri: str, cache_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Resolve `builtin:<name>` to split paths, generating them into cache_dir once."""
    prefix, _, name = uri.partition(":")
    if prefix != "builtin" or not name:
        raise ValueError(f"not a builtin data uri: {uri!r} (expected 'builtin:<name>')")
    _lookup(name)
    final = Path(cache_dir) / f"{name}-v{DATA_VERSION}-seed{seed}"
    paths = {split: final / f"{split}.jsonl" for split in SPLITS}
    if all(p.is_file() for p in paths.values()):
        return paths
    if final.exists():  # damaged (renames are atomic, so someone deleted files): regenerate
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        generate(name, tmp, seed)
        os.rename(tmp, final)
    except OSError:
        if not all(p.is_file() for p in paths.values()):  # not a lost race with another writer
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
