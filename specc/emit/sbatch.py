"""sbatch flags as data: validated, then shell-quoted in Python before any template sees them."""
from __future__ import annotations

import re
import shlex
from functools import lru_cache

from specc.errors import UserError
from specc.plan.runs import RunPlan

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FLAG = re.compile(r"^[a-z][a-z-]*$")


class UnsafeValue(UserError, ValueError):
    """A value that must not reach a script; the CLI reports it like any other user error (exit 1, no traceback)."""


def safe(value: object) -> str:
    """A value that may reach a script: no control characters (a newline would end an #SBATCH line)."""
    text = str(value)
    if _CONTROL.search(text):
        raise UnsafeValue(f"refusing a value with control characters: {text!r}")
    return text


def q(value: object) -> str:
    """Validated and shell-quoted."""
    return _quoted(str(value))


@lru_cache(maxsize=4096)   # a sweep's scripts repeat the same few values thousands of times
def _quoted(text: str) -> str:
    return shlex.quote(safe(text))


def job_flags(run: RunPlan, *, stage: str | None, log: str, job_name: str, array: str | None = None) -> list[tuple[str, str]]:
    """The #SBATCH flags for one run (or a test stage, or a whole sweep array)."""
    res = run.test_resources if stage == "test" else run.resources
    flags = [("job-name", job_name), ("partition", res.partition)]
    if res.qos:
        flags.append(("qos", res.qos))
    flags += [
        ("time", res.time),
        ("nodes", str(res.nodes)),
        ("ntasks-per-node", "1"),
        ("cpus-per-task", str(res.cpus)),
        ("mem", res.mem),
    ]
    if res.gpus:
        per_node = -(-res.gpus // res.nodes)
        flags.append(("gres", f"gpu:{res.gpu_type}:{per_node}" if res.gpu_type else f"gpu:{per_node}"))
    if array:
        flags.append(("array", array))
    flags += [
        ("output", log),
        ("open-mode", "append"),
        ("requeue", ""),
        ("signal", f"B:USR1@{res.signal_lead_s}"),
    ]
    return flags


def render_flags(flags: list[tuple[str, str]]) -> list[str]:
    lines = []
    for flag, value in flags:
        if not _FLAG.match(flag):
            raise UnsafeValue(f"bad sbatch flag name {flag!r}")
        lines.append(f"#SBATCH --{flag}" if value == "" else f"#SBATCH --{flag}={q(value)}")
    return lines


def parse_sbatch_lines(script: str) -> list[tuple[str, str]]:
    """Read the #SBATCH flags back out of a script (what sbatch would see), for tests and status."""
    out = []
    for line in script.splitlines():
        if not line.startswith("#SBATCH "):
            if line.strip() and not line.startswith("#"):
                break   # sbatch stops reading directives at the first command
            continue
        body = line[len("#SBATCH "):]
        parts = shlex.split(body)
        flag, _, value = parts[0].partition("=")
        if len(parts) != 1:
            raise UnsafeValue(f"#SBATCH line splits into several words: {line!r}")
        out.append((flag.removeprefix("--"), value))
    return out
