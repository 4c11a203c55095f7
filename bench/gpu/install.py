"""Install, from bench/gpu/wheels/ only (no index), whatever of specc's needs this Python cannot import, into
a private directory; print that directory (bench/gpu/run.sh puts it first on PYTHONPATH)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

WHEELS = Path(__file__).resolve().parent / "wheels"
# import name → distribution (the wheels fetch_wheels.sh downloads; the image has torch, transformers, peft, ...)
NEEDED = {"bitsandbytes": "bitsandbytes", "pydantic": "pydantic", "pydantic_core": "pydantic-core",
          "ruamel.yaml": "ruamel.yaml", "liger_kernel": "liger-kernel", "pynvml": "nvidia-ml-py",
          "typing_inspection": "typing-inspection", "annotated_types": "annotated-types", "typer": "typer",
          "rich": "rich", "click": "click", "shellingham": "shellingham", "markdown_it": "markdown-it-py",
          "mdurl": "mdurl", "pygments": "Pygments", "jinja2": "Jinja2", "markupsafe": "MarkupSafe", "pytest": "pytest",
          "pluggy": "pluggy", "iniconfig": "iniconfig"}


def missing() -> list[str]:
    out = []
    for module, dist in NEEDED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            out.append(dist)
    return out


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/specc-site")
    target.mkdir(parents=True, exist_ok=True)
    need = missing()
    if need:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--find-links", str(WHEELS),
               "--target", str(target), *need]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(f"install of {need} failed:\n{proc.stderr[-3000:]}\n")
    sys.stderr.write(f"installed from wheels: {need or 'nothing (all importable)'}\n")
    print(target)


if __name__ == "__main__":
    main()
