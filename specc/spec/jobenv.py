"""What a real cluster's job needs besides resources: an account, constraints, mail, the job's environment
(variables and setup lines such as `module load`), and further sbatch options.

The same section sits in a spec's `resources` and in a cluster's `defaults` (spec/clusters.py); the
planner combines them (plan/jobenv.py). Everything here reaches a job script, so it is validated here:
no control characters anywhere, variable names that cannot change how the script itself runs, setup
lines that are one complete line each, and extra sbatch options that are real sbatch long options not
already set by specc.
"""
from __future__ import annotations

import difflib
import re
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BeforeValidator, Field

from specc.spec.fields import CONTROL, Name, Strict

# `sbatch --help` (SLURM 22.05), long options only.
SBATCH_LONG_OPTIONS = frozenset("""
account array bb bbf begin chdir cluster-constraint clusters comment constraint container contiguous core-spec
cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot dependency distribution error exclude
exclusive export export-file extra-node-info get-user-env gid gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket
gpus-per-task gres gres-flags hold ignore-pbs input job-name licenses mail-type mail-user mcs-label mem mem-per-cpu
mem-per-gpu mincpus nice no-kill no-requeue nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-node
ntasks-per-socket output overcommit oversubscribe parsable partition power priority profile propagate qos quiet
reboot requeue reservation signal sockets-per-node spread-job switches thread-spec threads-per-core time time-min
tmp uid usage use-min-nodes verbose version wait wckey wrap
""".split())
# Set by specc from the spec's own fields, or essential to how its scripts work: not in extra_sbatch.
MANAGED_OPTIONS = {
    "account": "resources.account", "constraint": "resources.constraint", "exclusive": "resources.exclusive",
    "mail-user": "resources.mail.user", "mail-type": "resources.mail.type", "partition": "resources.partition",
    "qos": "resources.qos", "time": "resources.time", "nodes": "resources.nodes", "cpus-per-task": "resources.cpus",
    "mem": "resources.mem", "gres": "resources.gpus and gpu_type", "gpus": "resources.gpus",
    "job-name": None, "array": None, "output": None, "error": None, "open-mode": None, "requeue": None,
    "no-requeue": None, "signal": "resources.signal_lead_s", "ntasks-per-node": None, "ntasks": None,
    "dependency": None, "kill-on-invalid-dep": None, "wrap": None, "parsable": None, "chdir": None,
    "export": "resources.env", "export-file": "resources.env", "help": None, "usage": None, "version": None,
    "wait": None, "hold": None, "uid": None, "gid": None, "quiet": None, "verbose": None,
}
MAIL_TYPES = ("NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT", "TIME_LIMIT",
              "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS")
MailType = Literal[MAIL_TYPES]

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables the job script sets or relies on, and ones that change how bash itself reads the script.
RESERVED_ENV = frozenset({"SPECC", "SPECC_PYTHON", "CONFIG", "CONFIGS", "JOB_ID", "MAX_REQUEUES", "MASTER_ADDR",
                          "MASTER_PORT", "PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "HOME",
                          "PWD", "OLDPWD"})
RESERVED_PREFIXES = ("SLURM_", "BASH_")


def _env_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not an environment variable name (letters, digits and _, not starting "
                         "with a digit)")
    if name in RESERVED_ENV or name.startswith(RESERVED_PREFIXES):
        hint = " (prepend to PATH in a setup line: export PATH=...:$PATH)" if name == "PATH" else ""
        raise ValueError(f"{name} is set by SLURM, bash or the job script itself and cannot be set here{hint}")
    return name


def _scalar_text(v):
    if isinstance(v, bool):
        raise ValueError("write the value as a string")
    return str(v) if isinstance(v, (int, float)) else v


def _no_control(v: str) -> str:
    if CONTROL.search(v):
        raise ValueError(f"{v!r} contains control characters (newline, tab, ...)")
    return v


def _setup_line(line: str) -> str:
    _no_control(line)
    if not line.strip():
        raise ValueError("a setup line is empty")
    if line.rstrip().endswith("\\"):
        raise ValueError(f"{line!r} ends with a backslash: each setup line must be a whole command on its own")
    return line


def _option(flag: str) -> str:
    if flag in MANAGED_OPTIONS:
        field = MANAGED_OPTIONS[flag]
        raise ValueError(f"--{flag} is set by specc" + (f" from {field}" if field else " itself") + "; not in extra_sbatch")
    if flag not in SBATCH_LONG_OPTIONS:
        close = difflib.get_close_matches(flag, sorted(SBATCH_LONG_OPTIONS), n=1)
        raise ValueError(f"--{flag} is not an sbatch long option" + (f"; did you mean {close[0]!r}?" if close else "")
                         + " (write the option without its leading --)")
    return flag


def _option_value(v):
    if v is True:
        return ""           # a flag that takes no value
    if v is False or v is None:
        raise ValueError("false/null: leave the option out instead")
    return _no_control(str(v))


EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, BeforeValidator(_scalar_text), AfterValidator(_no_control)]
SetupLine = Annotated[str, AfterValidator(_setup_line)]
SbatchOption = Annotated[str, AfterValidator(_option)]
OptionValue = Annotated[Union[bool, str, int, float], AfterValidator(_option_value)]


class Mail(Strict):
    user: Name = Field(description="where SLURM sends mail (--mail-user)")
    type: list[MailType] = Field(default_factory=lambda: ["END", "FAIL"], min_length=1,
                                 description="when (--mail-type): BEGIN, END, FAIL, REQUEUE, TIME_LIMIT_80, ALL, ...")


class JobSettings(Strict):
    """Account, constraints, mail and the job's environment; also a cluster's defaults in the catalog."""
    account: Name | None = Field(None, description="the SLURM account to charge (--account)")
    constraint: Name | None = Field(None, description="node features, e.g. 'a100&ib' (--constraint)")
    exclusive: bool | None = Field(None, description="whole nodes to this job (--exclusive); null = the cluster's "
                                                     "default, else no")
    mail: Mail | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, description="variables exported in the job, as "
                                         "written (quoted: no $ expansion); the cluster's first, the spec's over them")
    setup: list[SetupLine] = Field(default_factory=list, description="shell lines run before specc (module load "
                                   "..., source .../activate), shown verbatim in the script; the cluster's first")
    extra_sbatch: dict[SbatchOption, OptionValue] = Field(default_factory=dict, description="further sbatch long "
                                                          "options, e.g. {gres-flags: enforce-binding}; true = a "
                                                          "flag without a value")
