"""A third-party backend registered through a real ``specc.backends`` entry point.

The plugin (tests/backends/plugin_pkg/specc_test_backend) is installed the way pip would leave it: a
``<name>.dist-info`` directory with METADATA and entry_points.txt on the path, so importlib.metadata
finds it as an installed distribution. Nothing in specc names it: the registry, the spec's
``backend:`` field and ``--backend`` learn of it from the entry point alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import backends  # noqa: E402
from specc.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PLUGIN_PKG = Path(__file__).resolve().parent / "plugin_pkg"
MISSING_MODULE = "specc_no_such_backend_module"
ENTRY_POINTS = {"plugin": "specc_test_backend:PluginBackend", "broken": f"{MISSING_MODULE}:Backend"}


def install(site: Path, entry_points: dict[str, str]) -> Path:
    """What `pip install` leaves for a distribution that registers backends: its .dist-info directory."""
    info = site / "specc_test_backend-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: specc-test-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[specc.backends]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site directory holding the plugin distribution: a working backend and one whose module is missing."""
    return install(tmp_path_factory.mktemp("site"), ENTRY_POINTS)


def specc(args: list[str], cwd: Path, site: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m specc ARGS` with the plugin distribution (and the plugin's package) on PYTHONPATH."""
    path = [str(site), str(PLUGIN_PKG)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "specc", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def quickstart(directory: Path, backend: str = "auto", steps: int = 30) -> Path:
    """specs/quickstart.yaml, cut to `steps` (warmup, evaluations and checkpoints scaled to fit)."""
    text = (REPO / "specs" / "quickstart.yaml").read_text()
    for old, new in (("max_steps: 200", f"max_steps: {steps}"), ("warmup_steps: 10,", "warmup_steps: 5,"),
                     ("eval_every: 25", "eval_every: 10"), ("checkpoint_every: 50", "checkpoint_every: 15"),
                     ("early_stopping: {warmup_steps: 100", "early_stopping: {warmup_steps: 20"),
                     ("backend: auto", f"backend: {backend}")):
        assert old in text, old
        text = text.replace(old, new)
    directory.mkdir(parents=True, exist_ok=True)
    spec = directory / f"quickstart-{backend}.yaml"
    spec.write_text(text)
    return spec


@pytest.mark.integration
def test_a_plugin_backend_trains_the_quickstart(tmp_path, site):
    spec = quickstart(tmp_path)
    proc = specc(["run", str(spec), "--backend", "plugin"], tmp_path, site)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    run_dir = tmp_path / "runs" / "quickstart" / "main"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert summary["backend"] == "plugin"
    assert summary["device"]["backend"] == "plugin" and summary["device"]["plugin"] == "specc_test_backend"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    train = [r["loss"] for r in records if "loss" in r]
    assert val[0] > 2.0 and summary["best_val_loss"] < val[0] / 2, val
    assert sum(train[-5:]) < sum(train[:5]) / 2, train


def test_a_spec_may_name_a_plugin_and_a_misspelt_one_gets_a_did_you_mean(tmp_path, site):
    good = quickstart(tmp_path, backend="plugin")
    proc = specc(["check", str(good)], tmp_path, site, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = specc(["compile", str(good)], tmp_path, site, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = json.loads((tmp_path / "generated" / "quickstart" / "main" / "config.json").read_text())
    assert config["backend"] == "plugin"

    bad = quickstart(tmp_path, backend="plugn")
    proc = specc(["check", str(bad)], tmp_path, site, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "unknown backend 'plugn'" in out and "did you mean 'plugin'?" in out
    assert f"{bad.name}:" in out   # a spec error, anchored in the file


def test_a_broken_plugin_is_reported_and_skipped(monkeypatch, capsys, site):
    monkeypatch.syspath_prepend(str(site))   # importlib.metadata now sees the distribution, as in a venv
    monkeypatch.setattr(backends, "_warned", set())
    assert {"plugin", "broken", "torch", "mlx"} <= set(backends.names())
    assert backends.unknown_backend("broken") is None   # registered: a spec may name it
    have = backends.available()
    assert "broken" not in have and "torch" in have
    err = capsys.readouterr().err
    assert "warning: backend plugin 'broken' skipped" in err and MISSING_MODULE in err
    with pytest.raises(UserError) as exc:
        backends.load_backend("broken")
    assert f"broken = {MISSING_MODULE}:Backend" in str(exc.value) and "specc-test-backend" in str(exc.value)
    assert type(backends.load_backend("torch")).__name__ == "TorchBackend"   # the built-ins are untouched


def test_a_run_on_a_broken_plugin_fails_with_the_reason(tmp_path, site):
    proc = specc(["run", str(quickstart(tmp_path)), "--backend", "broken"], tmp_path, site, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "backend plugin 'broken' cannot be loaded" in out and MISSING_MODULE in out
    assert "Traceback" not in out
