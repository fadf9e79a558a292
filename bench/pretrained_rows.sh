#!/usr/bin/env bash
# The README tower table's pretrained rows: each a `pipeline run` of configs/demo.yaml (8,000 images, 6 epochs,
# batch 256 over 2 CPU workers) with one change, plus the zero-shot score of the imported EfficientNet-Lite0 +
# MiniLM pair. Needs `make weights`. Prints one line per row: name, rsum, R@1s, untrained rsum, wall time.
#   bash bench/pretrained_rows.sh [row ...]      # default: all rows; logs in runs/rows/<row>.log
set -uo pipefail
cd "$(dirname "$0")/.."
PIPE=.venv/bin/pipeline
LITE0=weights/tf_efficientnet_lite0.safetensors
MINILM=weights/all-MiniLM-L6-v2
mkdir -p runs/rows
declare -A ROWS=(
  [lite0-scratch]="--set model.image.arch=timm:tf_efficientnet_lite0"
  [lite0-frozen]="--set model.image.arch=timm:tf_efficientnet_lite0 --set model.image.weights=$LITE0 --set model.image.freeze=true"
  [lite0-finetuned]="--set model.image.arch=timm:tf_efficientnet_lite0 --set model.image.weights=$LITE0 --set model.image.lr_mult=0.1"
  [minilm-frozen]="--set model.text.arch=hf:$MINILM --set data.tokenizer=pretrained --set model.text.freeze=true"
  [minilm-finetuned]="--set model.text.arch=hf:$MINILM --set data.tokenizer=pretrained --set model.text.lr_mult=0.1"
  [glove-frozen]="--set model.text.embeddings.path=weights/glove-6b-50d --set model.text.word_dim=50 --set model.text.embeddings.freeze=true"
  [glove-finetuned]="--set model.text.embeddings.path=weights/glove-6b-50d --set model.text.word_dim=50"
  [gru-50d]="--set model.text.word_dim=50"   # the GloVe rows' scratch baseline: random 50-d word vectors
  [minilm-finetuned-2ep]="--set model.text.arch=hf:$MINILM --set data.tokenizer=pretrained --set model.text.lr_mult=0.1 --set train.epochs=2"
  [demo]=""                                  # the demo itself, run in the same sitting
)
ORDER=(zero-shot demo gru-50d glove-frozen glove-finetuned lite0-frozen minilm-frozen lite0-finetuned lite0-scratch
       minilm-finetuned)
[ $# -gt 0 ] && ORDER=("$@")
row_line() {  # name report.json seconds
  .venv/bin/python - "$@" <<'PY'
import json, sys
name, path, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
r = json.load(open(path))
print(f"{name}: rsum {r['rsum']:.1f} i2t R@1 {r['i2t']['R@1']:.1f} t2i R@1 {r['t2i']['R@1']:.1f} "
      f"untrained {r.get('untrained_rsum', float('nan')):.1f} time {secs / 60:.1f} min")
PY
}
for row in "${ORDER[@]}"; do
  start=$(date +%s)
  if [ "$row" = zero-shot ]; then
    $PIPE import-model --image timm:tf_efficientnet_lite0 --image-weights $LITE0 --text hf:$MINILM \
      --out runs/rows/zoo/lite0-minilm > runs/rows/$row.log 2>&1 &&
    $PIPE evaluate --checkpoint runs/rows/zoo/lite0-minilm --data data/demo/val --out runs/rows/zero-shot \
      >> runs/rows/$row.log 2>&1
    report=runs/rows/zero-shot/report.json
  else
    # shellcheck disable=SC2086
    $PIPE run --set run.name=row-$row --set cca.enabled=false ${ROWS[$row]} > runs/rows/$row.log 2>&1
    report=$(ls -d runs/row-$row/report*/report.json 2>/dev/null | head -1)
  fi
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ $rc -ne 0 ] || [ -z "$report" ] || [ ! -f "$report" ]; then echo "$row: FAILED (rc $rc, see runs/rows/$row.log)"; continue; fi
  row_line "$row" "$report" "$secs"
done
