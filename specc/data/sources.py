"""Where a run's model and data are on this machine, and the model's tokenizer.

`builtin:` names resolve to the tiny model and datasets specc builds offline (cached on first use);
anything else is a local path. Shared by the planner, compile's step count, `specc plan` and the
engine, so all of them read the very same files.
"""
from __future__ import annotations

from pathlib import Path

from specc.errors import UserError


def resolve_model_path(path: str, log=None) -> Path:
    """A local HF directory, or the builtin tiny model (built and cached on first use)."""
    if path.startswith("builtin:"):
        from specc.builtin.tiny_llama import ensure_builtin_model

        return ensure_builtin_model(path.partition(":")[2], log=log)
    return Path(path)


def resolve_data(value: str | None, split: str) -> Path | None:
    """One split's file: a local path, or a builtin dataset's split (generated on first use)."""
    if value is None:
        return None
    if not value.startswith("builtin:"):
        return Path(value)
    from specc.builtin.datasets import resolve_builtin_data
    from specc.builtin.tiny_llama import default_cache_root

    try:
        return resolve_builtin_data(value, default_cache_root() / "data")[split]
    except ValueError as exc:
        raise UserError(f"data.{split}: {exc}") from None


def load_tokenizer(model_dir: Path):
    """The model's own tokenizer (transformers, local files only)."""
    from transformers import AutoTokenizer

    from specc.model_check import check_model_dir

    check_model_dir(model_dir)
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{model_dir}: cannot load the tokenizer ({type(exc).__name__}: {exc})".splitlines()[0],
                        hint="the directory needs tokenizer.json (or tokenizer.model) and tokenizer_config.json") from None
