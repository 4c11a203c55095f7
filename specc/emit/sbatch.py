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
    if res.account:
        flags.append(("account", res.account))
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
    if res.constraint:
        flags.append(("constraint", res.constraint))
    if res.exclusive:
        flags.append(("exclusive", ""))
    if array:
        flags.append(("array", array))
    flags += [
        ("output", log),
        ("open-mode", "append"),
        ("requeue", ""),
        ("signal", f"B:USR1@{res.signal_lead_s}"),
    ]
    if res.mail_user:
        flags += [("mail-user", res.mail_user), ("mail-type", res.mail_type or "END,FAIL")]
    flags += list(res.extra_sbatch)    # validated as sbatch long options that specc does not set (spec/jobenv.py)
    return flags


def environment_lines(res) -> list[str]:
    """`export NAME=value` for resources.env (quoted: the value as written) and the setup lines, verbatim.

    A setup line is the spec author's own shell code, shown as written so a reviewer sees it; it must be a
    complete command (`bash -n`), and the job stops if it fails."""
    lines = [f"export {name}={q(value)}" for name, value in res.env]
    if res.setup:
        lines += ["# Setup (resources.setup and the cluster's defaults), as written in the spec or the catalog;",
                  "# unset variables are allowed while it runs (activate scripts read some), a failing line ends the job.",
                  'specc_before=$(command -v specc || true)', "set +u"]
        for i, line in enumerate(res.setup, 1):
            check_setup_line(line)
            lines += [safe(line), f"specc_rc=$?; [ \"$specc_rc\" -eq 0 ] || {{ echo \"specc: setup line {i} failed "
                                  f"(exit $specc_rc): \"{q(line)}; exit 1; }}"]
        lines += ["set -u", 'cd "${SLURM_SUBMIT_DIR:-.}" || exit 1   # configs are relative to the submit directory',
                  "# An environment the setup activated that has its own specc runs the job.",
                  'specc_after=$(command -v specc || true)',
                  'if [ -n "$specc_after" ] && [ "$specc_after" != "$specc_before" ]; then export SPECC="$specc_after"; fi']
    return lines


@lru_cache(maxsize=256)
def check_setup_line(line: str) -> None:
    """A setup line must parse on its own (an open quote or heredoc would swallow the rest of the script)."""
    import shutil
    import subprocess

    bash = shutil.which("bash")
    if bash is None:
        return
    proc = subprocess.run([bash, "-n", "-c", line], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0 or proc.stderr.strip():   # an unterminated heredoc is only a warning to bash -n
        raise UnsafeValue(f"setup line {line!r} is not a complete shell command: "
                          f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'bash -n failed'}",
                          hint="each setup line must be one whole command (no open quotes, heredocs or trailing \\)")


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
