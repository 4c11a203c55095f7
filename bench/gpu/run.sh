#!/usr/bin/env bash
# The one GPU device call (about 8 minutes): the gpu-marked tests, the 1B-shape bf16 / NF4 throughput,
# memory and MFU against HF Trainer + peft on the same GPU, and the memory plan's check. Results: $OUT/*.json.
#   run(command="bash bench/gpu/run.sh", carry=["bench/gpu/wheels"], timeout_s=590)
# Prepare the wheels first on a machine with an index: bench/gpu/fetch_wheels.sh.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export OUT=${OUT:-/tmp/specc-gpu-out}
mkdir -p "$OUT"
py=${PYTHON:-python3}
site=$("$py" "$here/install.py" /tmp/specc-site 2>"$OUT/install.log")
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
cd "$repo"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$py" "$here/run.py" --budget-s "${BUDGET_S:-470}" 2>&1 | tee "$OUT/run.log"
