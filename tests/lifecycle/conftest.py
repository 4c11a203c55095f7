"""Fixtures for the lifecycle tests: calibration entries, fake finished runs, a tiny local model and data."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama (word-level tokenizer: words w0 … w123), written with numpy."""
    from tests.tiny_llama import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("model") / "tiny", tokenizer="words")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Work in a temporary directory: runs/, calibrations/ and generated/ land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPECC_CALIBRATIONS", raising=False)
    return tmp_path
