#!/usr/bin/env bash
# GPU efficiency check, one short script for a machine with one GPU, this repository and its virtualenv
# (`make test` or `pip install -e .` made it; nothing is downloaded here). Prints samples/s of this project's
# train step and of a plain PyTorch loop (ResNet-50 + transformer towers, 224 px, bf16, in-memory batch)
# and their ratio (target >= 0.95), then the Ray Data -> GPU ingest rate. Sized to take minutes, not yet
# timed on a GPU; the CPU mode of bench/gpu.py checks the script without one.
#
#   bench/gpu.sh                      # defaults below
#   bench/gpu.sh --compile            # also with torch.compile (extra arguments go to bench/gpu.py)
#   PY=/opt/venv/bin/python bench/gpu.sh
#
# Figures are printed and, when $OUT is set (a folder), written to $OUT/gpu.json and $OUT/gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

"$PY" -c "import torch, ray, pipeline; assert torch.cuda.is_available(), 'torch sees no CUDA device'" \
  || { echo "bench/gpu.sh: needs torch with CUDA, ray and this project importable by $PY" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

LOG="${OUT:+$OUT/gpu.log}"
JSON="${OUT:+$OUT/gpu.json}"
"$PY" bench/gpu.py --device cuda --image-size 224 --batch 256 --steps 40 --warmup 10 --ingest-images 2048 --ingest-epochs 5 \
  ${JSON:+--json "$JSON"} "$@" 2>&1 | tee ${LOG:+"$LOG"}
