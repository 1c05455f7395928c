#!/usr/bin/env bash
# Issue 15, acceptance 5: attention vs plain U-Net, cross-city (trained on Kampala train + Zanzibar, scored
# on Kathmandu, which neither saw), 3 seeds each, old recipe (dataset normalisation, D4 + jitter, by area).
# Budget: base 8, depth 4, 3 epochs x 30 steps of 8 tiles, float32, 1 worker x 2 CPUs.
# Needs Kathmandu's masks rasterised first: bench/cross_city/rasterise_kathmandu.py (-> /tmp/exp/kathmandu).
set -u
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
D=${TILESEG_DATA:-../shared/data}; K=$D/kampala/train; Z=$D/zanzibar
OUT=${OUT:-/tmp/q}
common="--base-filters 8 --depth 4 --tile 256 --batch-size 8 --epochs 3 --steps-per-epoch 30 --lr 2e-3 --dice \
  --precision float32 --workers 1 --cpus-per-worker 2 --val-fraction 0.1 --storage-path $OUT/runs"
for seed in 0 1 2; do
  for arch in unet attention_unet; do
    n=arch_${arch}_s$seed
    $PY -m tileseg.cli train --images $K $Z --arch $arch --seed $seed $common --out $OUT/$n.keras --name $n > $OUT/$n.log 2>&1
    $PY bench/cross_city/score.py $OUT/$n.keras kathmandu
  done
done
