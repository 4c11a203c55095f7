"""Built-in synthetic datasets, generated locally and deterministically (no download).

`builtin:capitalization` is the quickstart task: "Capitalize:\nsun\n" -> "Sun".
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

from specc.errors import UserError

# Bump when the generated text changes, so stale caches are not reused.
DATA_VERSION = 2
SPLITS = ("train", "valid", "test")

# The builtin model is pretrained on these words (see docs/quickstart-model.md).
WORDS = """
apple arrow autumn baker bell berry bird black blue boat bone book bottle box branch bread bridge
bright brown bubble cake calm camel candle car castle cat chair cherry circle city clean clock cloud
coast cold copper corn cotton cup dark day deep desert desk dog door dragon dream drum dry duck eagle
early earth east echo egg engine fast feather field fire fish flag flower fog forest fox fresh friend
frog garden ghost giant glass gold grape green guitar happy harbor hat hill home honey horse house ice
island jacket jelly jungle key king kite lake lamp leaf lemon light lion long love map maple meadow
melon milk mirror moon morning mother mountain music needle nest night north ocean old olive orange
owl paper park pearl pen pepper piano pink pillow planet plant pocket pond queen quick quiet rabbit
rain red ribbon river road robot rock rose round salt sand sea shadow ship shoe silver sky slow small
smoke snow soft song south spoon spring star stone storm street sugar summer sun sweet table tall tea
tiger timber tomato tower town train tree tulip valley velvet violet wagon warm water west whale
wheel white wind window winter wolf wood yellow young zebra
""".split()


# Valid and test words never occur in train, so validation loss measures the skill, not recall.
_SPLIT_WORDS = {
    "train": [w for i, w in enumerate(WORDS) if i % 10 not in (0, 5)],
    "valid": WORDS[0::10],
    "test": WORDS[5::10],
}


def random_word(rng: random.Random, split: str | None = None) -> str:
    """A random lowercase word from WORDS, or from one split's share of them."""
    return rng.choice(_SPLIT_WORDS[split] if split else WORDS)


def capitalization_example(rng: random.Random, split: str) -> dict[str, str]:
    """One quickstart example: capitalize a word."""
    word = random_word(rng, split)
    return {"prompt": f"Capitalize:\n{word}\n", "completion": word.capitalize()}


@dataclass(frozen=True)
class BuiltinDataset:
    description: str
    format: str                                    # the engine's data format name
    make_example: Callable[[random.Random, str], dict[str, str]]  # (rng, split) -> one JSONL record
    sizes: dict[str, int]                          # examples per split


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "capitalization": BuiltinDataset(
        description="Capitalize a common English word; valid/test words are held out of train.",
        format="prompt_completion",
        make_example=capitalization_example,
        sizes={"train": 2000, "valid": 200, "test": 200},
    ),
}


def _lookup(name: str) -> BuiltinDataset:
    if name not in BUILTIN_DATASETS:
        raise UserError(f"unknown builtin dataset {name!r}", hint=f"known: {', '.join(sorted(BUILTIN_DATASETS))}")
    return BUILTIN_DATASETS[name]


def generate(name: str, out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write train/valid/test JSONL for a builtin dataset into out_dir; returns split -> path."""
    spec = _lookup(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{name}:{seed}")
    paths = {}
    for split in SPLITS:
        path = paths[split] = out_dir / f"{split}.jsonl"
        records = (spec.make_example(rng, split) for _ in range(spec.sizes[split]))
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8", newline="\n")
    return paths


def resolve_builtin_data(uri: str, cache_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Resolve `builtin:<name>` to split paths, generating them into cache_dir once."""
    prefix, _, name = uri.partition(":")
    if prefix != "builtin" or not name:
        raise UserError(f"not a builtin data uri: {uri!r}", hint="write it as 'builtin:<name>', e.g. builtin:capitalization")
    _lookup(name)
    final = Path(cache_dir) / f"{name}-v{DATA_VERSION}-seed{seed}"
    paths = {split: final / f"{split}.jsonl" for split in SPLITS}
    if all(p.is_file() for p in paths.values()) and _first_line(paths["train"]) == _first_example(name, seed):
        return paths
    if final.exists():  # damaged, or written by an older generator: regenerate
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


def _first_example(name: str, seed: int) -> str:
    """The first train line this generator writes now: a stale cache (a forgotten version bump) won't match it."""
    spec = _lookup(name)
    return json.dumps(spec.make_example(random.Random(f"{name}:{seed}"), SPLITS[0]), sort_keys=True)


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\n")
