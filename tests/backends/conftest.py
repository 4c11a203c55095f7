"""Fixtures for the backend tests: a session-wide tiny random Llama (tests/tiny_llama.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_llama import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A session-wide tiny random Llama directory (byte-level tokenizer; read it, never write into it)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")
