#!/usr/bin/env bash
# Download the wheels bench/gpu/run.sh installs on the GPU machine (which cannot reach a package index):
# what its image lacks (bitsandbytes, pydantic + pydantic-core, ruamel.yaml, liger-kernel, nvidia-ml-py), and
# specc's CLI and test runner in case it lacks those too (typer, rich, jinja2, pytest, ...; install.py installs
# only what does not import), at the versions in constraints.txt, for CPython 3.10-3.13 on x86_64 Linux.
# About 57 MB; the device call carries them (`carry: ["bench/gpu/wheels"]`, 64 MiB with the working tree).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
pip=${PIP:-"$repo/.venv/bin/pip"}
out="$here/wheels"
mkdir -p "$out"
pin() { grep -i "^$1==" "$repo/constraints.txt" | head -1; }
platforms=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_28_x86_64)
for py in 3.10 3.11 3.12 3.13; do
  "$pip" download -q --no-deps --only-binary=:all: --python-version "$py" "${platforms[@]}" -d "$out" \
    "$(pin pydantic_core)" "$(pin MarkupSafe)"
done
"$pip" download -q --no-deps --only-binary=:all: --python-version 3.11 "${platforms[@]}" -d "$out" \
  "$(pin bitsandbytes)" "$(pin pydantic)" "$(pin ruamel.yaml)" "$(pin liger-kernel)" "$(pin nvidia-ml-py)" \
  "$(pin typing-inspection)" "$(pin annotated-types)" "$(pin typer)" "$(pin rich)" "$(pin click)" \
  "$(pin shellingham)" "$(pin markdown-it-py)" "$(pin mdurl)" "$(pin Pygments)" "$(pin Jinja2)" "$(pin pytest)" \
  "$(pin pluggy)" "$(pin iniconfig)"
du -sh "$out"
