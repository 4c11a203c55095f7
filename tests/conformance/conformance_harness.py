"""The conformance suite's machinery: the standard spec, `specc run` launchers (fork server or subprocess),
and readers for run directories. Fixtures live in conftest.py; the contract in test_contract.py.
"""
from __future__ import annotations

import copy
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import backends

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

RUN_TIMEOUT = float(os.environ.get("SPECC_CONFORMANCE_TIMEOUT", "300"))
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}


def make_model(path: Path) -> Path:
    """The conformance suite's tiny Llama (tests/tiny_llama.py, word-level tokenizer, TINY's shape)."""
    from tests.tiny_llama import make_tiny_llama

    return make_tiny_llama(path, tokenizer="words", **TINY)


# ---------------------------------------------------------------------------------------- backends

def _selected_backends() -> list[str]:
    names = backends.available()
    wanted = os.environ.get("SPECC_CONFORMANCE_BACKENDS")
    if wanted:
        names = [n for n in names if n in {w.strip() for w in wanted.split(",")}]
    return names


# ------------------------------------------------------------------------------ model and dataset

TINY = dict(hidden_size=32, num_layers=2, vocab_size=128, intermediate_size=64, num_heads=4, num_kv_heads=2)


def _documents(rng: np.random.Generator, n: int) -> list[str]:
    # Words from a small Zipf-ish vocabulary, so there is something to learn in a dozen steps.
    words = [f"w{i}" for i in range(60)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    return [" ".join(rng.choice(words, size=int(rng.integers(6, 28)), p=p)) for _ in range(n)]


def base_spec(model_dir: Path, data_dir: Path, backend: str) -> dict:
    """The suite's standard run: 16 steps of 2 micro-batches, checkpoint every 2, evaluate every 4."""
    return {
        "experiment": "conf",
        "hypothesis": {"statement": "every backend keeps the engine contract"},
        "model": {"path": str(model_dir), "size": "tiny", "quantization": "none", "dtype": "float32",
                  "lora": {"rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"train": str(data_dir / "train.jsonl"), "valid": str(data_dir / "valid.jsonl"),
                 "format": "text", "max_length": 32, "packing": True},
        "training": {"max_steps": 16, "batch_size": 4, "grad_accum": 2, "lr": 1.0e-2,
                     "schedule": {"kind": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1},
                     "eval_every": 4, "eval_examples": 8, "checkpoint_every": 2, "keep_last": 2,
                     "early_stopping": {"enabled": False}, "seed": 7},
        "resources": {"cluster": "local", "partition": "debug", "time": "00:10:00"},
        "backend": backend,
    }


def merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------------------- runners

@dataclass
class Proc:
    """One `specc` process: started, then waited for or signalled."""
    pid: int
    stdout_path: Path
    stderr_path: Path
    _wait: object = field(repr=False)
    rc: int | None = None

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        if self.rc is None:
            self.rc = self._wait(timeout)
            if self.rc is None:
                self.kill()
                self.rc = self._wait(30)
                raise AssertionError(f"specc run (pid {self.pid}) took over {timeout:.0f}s and was killed; "
                                     f"stderr tail:\n{self.stderr[-3000:]}")
        return self.rc

    def poll(self) -> int | None:
        if self.rc is None:
            self.rc = self._wait(0)
        return self.rc

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.rc is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_for(self, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match | None:
        """Wait until stderr matches `pattern` (returns the match), or the process ends (None)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.stderr)
            if m:
                return m
            if self.poll() is not None:
                return rx.search(self.stderr)
            time.sleep(0.02)
        self.kill()
        self._wait(60)
        raise AssertionError(f"no {pattern!r} in the output of pid {self.pid} after {timeout:.0f}s; "
                             f"stderr tail:\n{self.stderr[-3000:]}")


class ForkServer:
    """Client of _zygote.py: one server per backend, one child at a time."""

    def __init__(self, preload: list[str], env: dict, log: Path):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_zygote.py"), *preload], cwd=str(REPO), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self._buf = b""
        self.current: Proc | None = None
        ready = self._line(RUN_TIMEOUT)
        if ready is None or not ready.get("ready"):
            raise RuntimeError(f"the fork server did not start (see {log})")

    def _line(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            if not select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the fork server exited (rc {self.proc.wait()}); see {self.log.name}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def start(self, req: dict) -> Proc:
        if self.current is not None and self.current.poll() is None:   # a test gave up on it: end it, stay in step
            self.current.kill()
            self.current.wait(60)
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        pid = self._line(60)["pid"]

        def wait(timeout):
            msg = self._line(timeout)
            if msg is None:
                return None
            assert msg["pid"] == pid, msg
            return msg["rc"]

        self.current = Proc(pid, Path(req["stdout"]), Path(req["stderr"]), wait)
        return self.current

    def close(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.current.kill()
        self.proc.stdin.close()   # the server's loop ends; its interpreter exit can take seconds: do not wait for it
        try:
            self.proc.wait(1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _console_script() -> list[str]:
    exe = shutil.which("specc", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-c", "from specc.cli import main; main()"]


class SubprocessRunner:
    """Every run a fresh console-script process (SPECC_CONFORMANCE_RUNNER=subprocess); runs that inject a
    fault into the backend, and in-process checks, a fresh `python _zygote.py --once`."""

    def start(self, req: dict) -> Proc:
        if req.get("inject") or req.get("call"):
            cmd = [sys.executable, str(HERE / "_zygote.py"), "--once", json.dumps(req)]
        else:
            cmd = [*_console_script(), *req["argv"]]
        with open(req["stdout"], "wb") as fo, open(req["stderr"], "wb") as fe:
            p = subprocess.Popen(cmd, cwd=req["cwd"], env=req["env"], stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)

        def wait(timeout):
            try:
                return p.wait(timeout if timeout > 0 else 0.001)
            except subprocess.TimeoutExpired:
                return None

        return Proc(p.pid, Path(req["stdout"]), Path(req["stderr"]), wait)

    def close(self) -> None:
        pass


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SPECC_FAULT" and not k.startswith("PYTEST_")}
    env.update(THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# What a fork server imports beyond the registry's module list, so its children start warm. Forking after
# these imports is safe for both: neither has run any computation (no thread pools, no device state) yet.
EXTRA_PRELOAD = {
    "torch": ["peft", "transformers.models.llama.modeling_llama", "transformers.tokenization_utils_fast"],
    "mlx": ["mlx.core", "mlx.nn", "mlx.optimizers", "mlx.utils", "mlx_lm.utils", "mlx_lm.tuner.utils",
            "mlx_lm.models.llama"],
}


def _preload(backend: str, model_dir: Path) -> list[str]:
    """Modules the fork server imports: all of specc (so every child of a session runs the same code), the
    backend and its packages. A name prefixed with '?' may fail to import; '@tokenizer=DIR' loads one."""
    import pkgutil

    import specc

    info = backends.registry()[backend]
    ours = ["?" + m.name for m in pkgutil.walk_packages(specc.__path__, "specc.")]
    return ["specc.cli", "specc.commands.run", "specc.engine.loop", "specc.engine.session", *ours,
            "safetensors.numpy", "transformers", "tokenizers", "_faulty", "_inproc", info.target.partition(":")[0],
            *[m for m in info.modules if m != "bitsandbytes"], *EXTRA_PRELOAD.get(backend, []),
            f"@tokenizer={model_dir}"]


# --------------------------------------------------------------------------------------- workspace

@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


class Workspace:
    """A working directory (runs/ lands here) with spec helpers and a `specc run` launcher."""

    def __init__(self, root: Path, backend: str, runner, model_dir: Path, data_dir: Path):
        self.root, self.backend, self.runner = root, backend, runner
        self.model_dir, self.data_dir = model_dir, data_dir
        self.base = base_spec(model_dir, data_dir, backend)
        self._n = 0

    def spec(self, overrides: dict | None = None, name: str = "spec.yaml") -> Path:
        """Write the standard spec deep-merged with `overrides` (JSON is YAML) and return its path."""
        path = self.root / name
        path.write_text(json.dumps(merged(self.base, overrides or {}), indent=2) + "\n")
        return path

    def spec_dict(self, overrides: dict | None = None) -> dict:
        return merged(self.base, overrides or {})

    def run_dir(self, experiment: str = "conf", run: str = "main") -> Path:
        return self.root / "runs" / experiment / run

    def _request(self, argv: list[str], fault: str | None, env: dict | None, **extra) -> dict:
        self._n += 1
        e = base_env()
        if fault:
            e["SPECC_FAULT"] = fault
        e.update(env or {})
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        tag = f"{self._n:03d}" + (f"-{fault.replace('@', '-').replace(':', '-')}" if fault else "")
        return {"argv": argv, "cwd": str(self.root), "env": e, "stdout": str(logs / f"{tag}.out"),
                "stderr": str(logs / f"{tag}.err"), **extra}

    def start(self, *argv: str, fault: str | None = None, inject: dict | None = None, env: dict | None = None) -> Proc:
        """Start `specc run ARGV...` (SPECC_FAULT=fault; `inject` wraps the backend, see _faulty.py)."""
        return self.runner.start(self._request(["run", *map(str, argv)], fault, env, inject=inject))

    def specc(self, *argv: str, fault: str | None = None, inject: dict | None = None, env: dict | None = None,
              timeout: float = RUN_TIMEOUT) -> Result:
        p = self.start(*argv, fault=fault, inject=inject, env=env)
        rc = p.wait(timeout)
        return Result(rc, p.stdout, p.stderr)

    def call(self, function: str, timeout: float = RUN_TIMEOUT, **kwargs):
        """Run _inproc.<function>(**kwargs) in a child process of this backend's runner; return its JSON result."""
        result = self.root / "logs" / f"call-{self._n + 1:03d}.json"
        req = self._request([], None, None, call={"target": f"_inproc:{function}", "kwargs": kwargs,
                                                   "result": str(result)})
        p = self.runner.start(req)
        rc = p.wait(timeout)
        assert rc == 0, f"_inproc.{function} failed (rc {rc}):\n{p.stderr[-4000:]}"
        return json.loads(result.read_text())


# ----------------------------------------------------------------------------- the reference run

@dataclass
class Reference:
    """The standard spec trained once, uninterrupted: what every interrupted run must reproduce bit for bit."""
    rc: int
    stderr: str
    run_dir: Path
    spec: dict

    @property
    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())


# --------------------------------------------------------------------------------- reading runs

def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def step_lines(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "loss" in m and "event" not in m]


def val_lines(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "val_loss" in m]


def deterministic(lines: list[dict]) -> list[dict]:
    """A metrics line without what depends on the clock or the allocator."""
    return [{k: v for k, v in m.items() if k not in ("step_s", "mem_mb", "t")} for m in lines]


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


SPECC_STATE = "adapter_state.safetensors"   # specc's own canonical copy beside the ecosystem's file in best/, adapter/


def adapter_arrays(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of an exported adapter directory in its ecosystem's files (PEFT's adapter_model.safetensors,
    mlx-lm's adapters.safetensors, ...); specc's canonical copy is read by specc_state()."""
    files = sorted(f for f in directory.glob("*.safetensors") if f.name != SPECC_STATE)
    assert files, f"no *.safetensors in {directory}: {sorted(p.name for p in directory.iterdir())}"
    out = {}
    for f in files:
        out.update({f"{f.name}:{k}": v for k, v in load_arrays(f).items()})
    return out


def specc_state(directory: Path) -> dict[str, np.ndarray]:
    """specc's canonical copy of a published adapter (what scoring and `specc eval` load back)."""
    path = directory / SPECC_STATE
    assert path.is_file(), f"{directory}: no {SPECC_STATE}"
    return load_arrays(path)


def checkpoints(run_dir: Path) -> dict[int, Path]:
    root = run_dir / "checkpoints"
    return {int(p.name[5:]): p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name)} if root.is_dir() else {}


def assert_arrays_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert sorted(a) == sorted(b), f"{what}: different tensors: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k} differs in dtype/shape"
        if not np.array_equal(a[k], b[k], equal_nan=True):
            diff = np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))
            raise AssertionError(f"{what}: {k} is not bit-identical (max |diff| {diff:.3g})")


def assert_same_training(run_dir: Path, ref_dir: Path) -> None:
    """Bit-identical training: every step and validation line, the final checkpoint, best/ and adapter/."""
    got, want = read_metrics(run_dir), read_metrics(ref_dir)
    got_steps, want_steps = step_lines(got), step_lines(want)
    assert [m["step"] for m in got_steps] == list(range(1, len(got_steps) + 1)), "steps are not 1..N, each once"
    assert deterministic(got_steps) == deterministic(want_steps), _first_difference(got_steps, want_steps)
    assert deterministic(val_lines(got)) == deterministic(val_lines(want))
    saved = [m["step"] for m in got if m.get("event") == "checkpoint"]
    assert len(saved) == len(set(saved)), f"a checkpoint was written twice for one step: {saved}"
    gc, wc = checkpoints(run_dir), checkpoints(ref_dir)
    assert sorted(gc) == sorted(wc), f"checkpoints kept: {sorted(gc)} vs uninterrupted {sorted(wc)}"
    last = max(wc)
    assert_arrays_equal(load_arrays(gc[last] / "state.safetensors"), load_arrays(wc[last] / "state.safetensors"),
                        f"checkpoint step {last} (adapter, optimizer and RNG state)")
    for published in ("adapter", "best"):
        assert_arrays_equal(adapter_arrays(run_dir / published), adapter_arrays(ref_dir / published), f"{published}/")
        assert_arrays_equal(specc_state(run_dir / published), specc_state(ref_dir / published), f"{published}/ (specc's copy)")
    s, r = (json.loads((d / "summary.json").read_text()) for d in (run_dir, ref_dir))
    for key in ("status", "steps", "tokens", "best_val_loss", "best_step", "final_loss", "last_loss"):
        assert s[key] == r[key], f"summary {key}: {s[key]!r} vs uninterrupted {r[key]!r}"
    leftovers = [p.name for d in (run_dir, run_dir / "checkpoints") for p in d.iterdir()
                 if re.search(r"\.(tmp|old|del)-\d+$", p.name)]
    assert not leftovers, f"leftovers of interrupted writes: {leftovers}"


def _first_difference(got: list[dict], want: list[dict]) -> str:
    for g, w in zip(deterministic(got), deterministic(want)):
        if g != w:
            return f"first differing step line: {g} vs uninterrupted {w}"
    return f"{len(got)} step lines vs {len(want)} uninterrupted"


