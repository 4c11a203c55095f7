"""What both training backends need, written once: the model directory, the checks that depend on the
model (quantization, `lora.layers` against its blocks, adapter and optimizer entries when state is
loaded), the "auto" dtype, and the RSS memory figure when the device reports none.

The spec (specc/spec/model.py) already guarantees rank >= 1, layers >= 1, dtype in auto|float32|bfloat16
and the rest of the field ranges, so a backend does not check them again. Quantization is the one
spec-level value still checked here: it picks a code path, and a caller of the protocol that
bypasses the spec (a plugin, a benchmark) must not silently get the unquantized one.
"""
from __future__ import annotations

import os
import resource
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from backends.protocol import LoraSettings, MemoryStats
from specc.errors import UserError
from specc.model_check import WEIGHTS, check_model_dir, listing

LORA_MISMATCH = ("the checkpoint was made with different LoRA settings (rank, target modules, layers): "
                 "resume with the same model and lora settings")
QUANTIZATIONS = ("nf4", "none")


def model_dir(path: Path, *, weights: tuple[str, ...] = WEIGHTS, need_tokenizer: bool = True) -> Path:
    """The absolute path of a usable local HF model directory, or a UserError naming what is there."""
    check_model_dir(path, weights=weights, need_tokenizer=need_tokenizer)
    return Path(path).expanduser().resolve()


def load_error(path: Path, detail: str) -> UserError:
    """A model directory that passed the file checks but did not load (corrupt weights, bad config, ...)."""
    return UserError(f"could not load the model: {detail}", where=str(path), hint=f"the directory holds: {listing(path)}")


def quantization(requested: str) -> str:
    if requested not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {requested!r}", hint="use nf4 or none", where="model.quantization")
    return requested


def dtype_name(dtype: str, accelerator: bool) -> str:
    """The spec's dtype; "auto" is bfloat16 on an accelerator (CUDA, Metal) and float32 on the CPU."""
    if dtype == "auto":
        return "bfloat16" if accelerator else "float32"
    return dtype


def lora_blocks(lora: LoraSettings, n_blocks: int) -> int:
    """How many transformer blocks, counted from the last, get adapters (lora.layers; None = all)."""
    if lora.layers is None:
        return n_blocks
    if lora.layers > n_blocks:
        raise UserError(f"lora.layers={lora.layers} but the model has {n_blocks} transformer blocks",
                        hint=f"use 1..{n_blocks}, or leave it unset for all blocks", where="lora.layers")
    return lora.layers


def entries(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of a state dict under "<prefix>/", without the prefix."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + "/")}


def check_keys(what: str, expected: Iterable[str], given: Iterable[str], *, allow_missing: bool = False) -> None:
    """Raise when `given` names entries the model does not have (or lacks some, unless allow_missing)."""
    expected, given = set(expected), set(given)
    missing = [] if allow_missing else sorted(expected - given)
    unknown = sorted(given - expected)
    if missing or unknown:
        parts = ([f"missing {len(missing)} (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(unknown)} unknown (e.g. {unknown[0]})"] if unknown else [])
        raise UserError(f"{what} does not match this model's LoRA parameters: {'; '.join(parts)}", hint=LORA_MISMATCH)


def check_shape(key: str, value, shape: Iterable[int]) -> np.ndarray:
    """`value` as an array, if it has the shape the model expects for `key`."""
    value, shape = np.asarray(value), tuple(shape)
    if tuple(value.shape) != shape:
        raise UserError(f"checkpoint entry {key} has shape {tuple(value.shape)}, the model expects {shape}",
                        hint=LORA_MISMATCH)
    return value


def adapter_arrays(state: Mapping[str, np.ndarray], shapes: Mapping[str, Iterable[int]],
                   what: str = "adapter weights") -> dict[str, np.ndarray]:
    """The "adapter/<name>" entries of `state`, checked against this model's LoRA parameters (name -> shape)."""
    given = entries(state, "adapter")
    check_keys(what, shapes, given)
    return {name: check_shape(f"adapter/{name}", given[name], shape) for name, shape in shapes.items()}


_statm: tuple[int, int] | None = None    # (pid, fd of /proc/<pid>/statm), kept open: read once per step


def _resident_mb() -> float | None:
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():   # a forked child must not read its parent's
            _statm = (os.getpid(), os.open(f"/proc/{os.getpid()}/statm", os.O_RDONLY))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 2
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def rss_memory() -> MemoryStats:
    """This process's resident memory (now, from /proc where there is one) and its peak (getrusage)."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak_kb / 1024 ** 2 if sys.platform == "darwin" else peak_kb / 1024  # bytes on macOS
    current_mb = _resident_mb()
    current_mb = peak_mb if current_mb is None else current_mb
    return MemoryStats(current_mb, max(peak_mb, current_mb), "rss")


# Besides config.json and the weights, what a model directory holds for its loaders (tokenizer, generation).
MODEL_SIDE_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                    "generation_config.json")


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer and generation files of model directory `src` into `dst` (a merged export)."""
    import shutil

    copied = []
    for name in MODEL_SIDE_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
