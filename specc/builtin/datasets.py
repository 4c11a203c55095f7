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

_COMMON_WORDS = """
the of and to in is it you that he was for on are with as his they be at one have this from or had
by word but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him two
has look more day could go come did number sound no most people my over know water than call first who
may down side been now find any new work part take get place made live where after back little only
round man year came show every good me give our under name very through just form sentence great think
say help low line differ turn cause much mean before move right boy old too same tell does set three
want air well also play small end put home read hand port large spell add even land here must big high
such follow act why ask men change went light kind off need house picture try us again animal point
mother world near build self earth father head stand own page should country found answer school grow
study still learn plant cover food sun four between state keep eye never last let thought city tree
cross farm hard start might story saw far sea draw left late run while press close night real life few
north open seem together next white children begin got walk example ease paper group always music those
both mark often letter until mile river car feet care second book carry took science eat room friend
""".split()
_ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr pl sh st th tr".split()
_NUCLEI = "a e i o u ai ea ee oo ou".split()
_CODAS = ["", "", "", "n", "r", "s", "t", "ck", "ld", "m", "nd", "st"]


def random_word(rng: random.Random) -> str:
    """A lowercase word: a common English word or a pronounceable made-up one."""
    if rng.random() < 0.6:
        return rng.choice(_COMMON_WORDS)
    syllables = rng.randint(1, 3)
    return "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) for _ in range(syllables)) + rng.choice(_CODAS)


def random_phrase(rng: random.Random, min_words: int = 1, max_words: int = 6) -> list[str]:
    """A list of random lowercase words."""
    return [random_word(rng) for _ in range(rng.randint(min_words, max_words))]


def capitalization_example(rng: random.Random) -> dict[str, str]:
    """One quickstart example: capitalize the first letter of every word."""
    words = random_phrase(rng)
    return {"prompt": f"Capitalize: {' '.join(words)}\n", "completion": " ".join(w.capitalize() for w in words)}


@dataclass(frozen=True)
class BuiltinDataset:
    description: str
    format: str                                    # the engine's data format name
    make_example: Callable[[random.Random], dict[str, str]]
    sizes: dict[str, int]                          # examples per split


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "capitalization": BuiltinDataset(
        description="Capitalize the first letter of every word (1-6 words, common and made-up).",
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
