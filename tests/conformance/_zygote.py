"""A fork server for the conformance tests: import the heavy modules once, then fork one `specc` process per run.

Importing torch + transformers + peft takes seconds (tens of seconds on a loaded 2-core machine); the
kill/resume test starts dozens of trainer processes. This script is started once per backend; each
request forks a child that runs exactly what the `specc` console script runs (`specc.cli.main()` with
the given argv) in its own working directory, environment and log files. A child is a real, separate
process: the test kills it with a real SIGKILL / SIGTERM and gets its real exit status.

Protocol (one JSON object per line): the client writes {"argv", "cwd", "env", "stdout", "stderr",
"inject"}; the server answers {"pid"} once the child runs, then {"pid", "rc"} when it ends (rc < 0:
killed by signal -rc, as subprocess reports it). The server itself never trains, so nothing it forks
from holds live thread pools.

`inject` (optional) wraps the backend the child builds, for faults a real backend cannot be asked to
produce (tests/conformance/_faulty.py). `call` (instead of argv) runs a function of _inproc.py in the
child, for checks that need a live backend object; its JSON result goes to a file.
`_zygote.py --once REQUEST` runs one request in the current process (no fork): the subprocess runner.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback


def _child(req: dict) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    if req.get("call"):
        return _call(req["call"])
    if req.get("inject"):
        import _faulty

        _faulty.install(req["inject"])
    sys.argv = ["specc", *req["argv"]]
    from specc.cli import main

    try:
        main()
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # what the interpreter would do with an uncaught exception
        traceback.print_exc()
        return 1


def _call(call: dict) -> int:
    """Run `module:function(**kwargs)` (a check that needs a live backend object) and write its JSON result."""
    module, _, name = call["target"].partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(**call["kwargs"])
    except BaseException:
        traceback.print_exc()
        return 1
    with open(call["result"], "w") as fh:
        json.dump(result, fh)
    return 0


def serve(preload: list[str]) -> None:
    for name in preload:
        if name.startswith("@tokenizer="):   # load a tokenizer once: it pulls in most of transformers
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(name.partition("=")[2], local_files_only=True)
            continue
        try:
            importlib.import_module(name.lstrip("?"))
        except Exception:
            if not name.startswith("?"):
                raise
    reply = sys.stdout
    reply.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    reply.flush()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(req)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        reply.write(json.dumps({"pid": pid, "rc": rc}) + "\n")
        reply.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--once"]:   # no server: run one request in this process (the subprocess runner)
        os._exit(_child(json.loads(sys.argv[2])))
    serve(sys.argv[1:])
