"""Fixtures for the backend conformance suite: one engine contract, every installed backend.

Tests take the `backend` fixture, parametrized over `backends.available()`, so a new backend is held
to the contract by registering itself, not by writing tests. Narrow it with
SPECC_CONFORMANCE_BACKENDS=torch,mlx (or pytest -k torch).

Runs go through the real `specc run` command line. By default each run is a process forked from a
per-backend fork server (_zygote.py) that imported torch/transformers/... once, so dozens of trainer
processes start in well under a second each, and are killed with real signals. Set
SPECC_CONFORMANCE_RUNNER=subprocess to start every run as a fresh `specc` console-script process
instead (slower; the same tests).

Every run uses one thread (OMP_NUM_THREADS=1): the suite runs on small shared machines, where a
contended thread pool makes a tiny model 50x slower; bit-exactness is always between runs under the
same settings.

Knobs: SPECC_CONFORMANCE_SEED replays the kill test's random draw (printed with -s or on failure),
SPECC_CONFORMANCE_KILLS sets its number of kills (default 22), SPECC_CONFORMANCE_TIMEOUT the limit
for one run in seconds (default 300).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conformance_harness import (
    ForkServer,
    Reference,
    SubprocessRunner,
    Workspace,
    _documents,
    _preload,
    _selected_backends,
    base_env,
    make_model,
)


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        names = _selected_backends()
        metafunc.parametrize("backend", names or [pytest.param("none", marks=pytest.mark.skip(
            reason="no training backend installed (pip install 'specc[torch]' or 'specc[mlx]')"))], scope="session")


# ------------------------------------------------------------------------------ model and dataset

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 32, 2 layers, vocab 128), numpy-only; read it, never write into it."""
    return make_model(tmp_path_factory.mktemp("conformance-model") / "model")


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """train.jsonl (64 docs) and valid.jsonl (12 docs) in the `text` format."""
    d = tmp_path_factory.mktemp("conformance-data")
    rng = np.random.default_rng(1234)
    for split, n in (("train", 64), ("valid", 12)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in _documents(rng, n)))
    return d


# ----------------------------------------------------------------------------------------- runners

@pytest.fixture(scope="session")
def _runners(tmp_path_factory, tiny_model_dir):
    made: dict[str, object] = {}

    def get(backend: str):
        if backend not in made:
            if os.environ.get("SPECC_CONFORMANCE_RUNNER", "fork") == "subprocess":
                made[backend] = SubprocessRunner()
            else:
                log = tmp_path_factory.mktemp("forkserver") / f"{backend}.log"
                made[backend] = ForkServer(_preload(backend, tiny_model_dir), base_env(), log)
        return made[backend]

    yield get
    for r in made.values():
        r.close()


# --------------------------------------------------------------------------------------- workspace

@pytest.fixture
def workspace(backend, _runners, tiny_model_dir, dataset_dir, tmp_path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    return Workspace(root, backend, _runners(backend), tiny_model_dir, dataset_dir)


# ----------------------------------------------------------------------------- the reference run

@pytest.fixture(scope="session")
def _reference_cache():
    return {}


@pytest.fixture
def reference(backend, _runners, tiny_model_dir, dataset_dir, tmp_path_factory, _reference_cache) -> Reference:
    if backend not in _reference_cache:
        root = tmp_path_factory.mktemp(f"reference-{backend}")
        ws = Workspace(root, backend, _runners(backend), tiny_model_dir, dataset_dir)
        res = ws.specc(ws.spec())
        _reference_cache[backend] = Reference(res.rc, res.stderr, ws.run_dir(), ws.spec_dict())
    ref = _reference_cache[backend]
    assert ref.rc == 0, f"the reference run failed (rc {ref.rc}):\n{ref.stderr[-4000:]}"
    return ref
