#!/usr/bin/env bash
# GPU check for a machine with one GPU and this checkout (nothing is downloaded here), in two stages:
#   1. bench/gpu_noray.py: needs only torch (with CUDA), torchvision and timm: train steps of the demo towers and
#      of a ViT-B/32-sized pair against a plain PyTorch loop (bf16, channels_last, compile off and on, MFU) and
#      JPEG decode rates (PIL, torchvision CPU, batched CUDA). Runs on a GPU machine that has no Ray.
#   2. bench/gpu.py: the Ray Data -> GPU ingest rate, data.decode=cpu and gpu; where `import ray` works, or with
#      the wheels in .whl/ (`.venv/bin/python bench/gpu_bundle.py` here; carry .whl), else skipped, and said.
# Each stage is sized to fit one call of at most 8 minutes and writes its figures as it goes.
#
#   bench/gpu.sh                      # both stages, defaults
#   bench/gpu.sh --pairs vit_b32      # extra arguments go to stage 1
#   PY=/opt/venv/bin/python bench/gpu.sh
#
# Figures are printed and, when $OUT is set (a folder), written to $OUT/gpu_noray.json, $OUT/gpu.json and
# $OUT/gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" \
  || { echo "bench/gpu.sh: needs torch with CUDA importable by $PY" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# No Ray on the machine: the wheels bench/gpu_bundle.py built, carried in .whl/ (Ray without its Java jar, and
# jsonschema's family), installed beside it.
if ! "$PY" -c "import ray" 2>/dev/null && ls .whl/ray-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

LOG="${OUT:+$OUT/gpu.log}"
"$PY" bench/gpu_noray.py --device cuda ${OUT:+--json "$OUT/gpu_noray.json"} "$@" 2>&1 | tee ${LOG:+"$LOG"}
if "$PY" -c "import ray" 2>/dev/null; then
  "$PY" bench/gpu.py --device cuda --image-size 224 --batch 256 --steps 40 --warmup 10 --ingest-images 2048 \
    --ingest-epochs 5 ${OUT:+--json "$OUT/gpu.json"} 2>&1 | tee ${LOG:+-a "$LOG"}
else
  echo "stage 2 (bench/gpu.py, Ray Data -> GPU) skipped: ray is not importable by $PY" | tee ${LOG:+-a "$LOG"}
fi
