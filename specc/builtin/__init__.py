"""Offline quickstart assets: a tiny pretrained Llama and synthetic datasets, generated locally."""
from specc.builtin.datasets import BUILTIN_DATASETS, generate, resolve_builtin_data
from specc.builtin.tiny_llama import default_cache_root, ensure_builtin_model

__all__ = ["BUILTIN_DATASETS", "default_cache_root", "ensure_builtin_model", "generate", "resolve_builtin_data"]
