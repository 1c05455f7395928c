#!/usr/bin/env bash
# Old recipe (today's training, shipped-model settings) at a fixed small budget, leave one city out.
cd /tmp/exp/code
export PYTHONPATH=/tmp/exp/code TF_CPP_MIN_LOG_LEVEL=2
K=/work/shared/data/kampala/train; Z=/work/shared/data/zanzibar; T=/tmp/exp/kathmandu
common="--arch attention_unet --base-filters 16 --depth 4 --tile 256 --batch-size 8 --epochs 8 --steps-per-epoch 40 --lr 1e-3 --dice --precision mixed_bfloat16 --workers 1 --cpus-per-worker 2 --seed 0 --val-fraction 0.1 --storage-path /tmp/exp/runs"
for held in kathmandu zanzibar kampala; do
  case $held in
    kathmandu) imgs="$K $Z";;
    zanzibar) imgs="$K $T";;
    kampala) imgs="$Z $T";;
  esac
  start=$(date +%s)
  /work/main/.venv/bin/python -m tileseg.cli train --images $imgs --out /tmp/exp/old_$held.keras --name old_$held $common > /tmp/exp/old_$held.log 2>&1
  echo "$held train rc=$? $(( $(date +%s) - start )) s" >> /tmp/exp/loco_old.txt
  /work/main/.venv/bin/python /tmp/exp/score.py /tmp/exp/old_$held.keras $held >> /tmp/exp/loco_old.txt 2>/dev/null
done
echo DONE >> /tmp/exp/loco_old.txt
