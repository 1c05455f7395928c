#!/usr/bin/env bash
# Issue 16, acceptance 2: a model trained at zoom 21 only, then the zoom 19/20 chips with and without
# --resample auto (bench/tta_resolution.py uses the model's GSD range as the job does).
set -eu
cd "$(dirname "$0")/../.."
D=${TILESEG_DATA:-../shared/data}; OUT=${OUT:-/tmp/q}; Z=$OUT/z21
for c in kampala zanzibar; do mkdir -p $Z/$c/images $Z/$c/masks; done
ln -sf $(realpath $D)/kampala/train/images/*-21.tif $Z/kampala/images/
ln -sf $(realpath $D)/kampala/train/masks/*-21.tif $Z/kampala/masks/
ln -sf $(realpath $D)/zanzibar/images/*-21.png $Z/zanzibar/images/
ln -sf $(realpath $D)/zanzibar/masks/*-21.tif $Z/zanzibar/masks/
.venv/bin/tileseg train --images $Z/kampala $Z/zanzibar --arch attention_unet --seed 0 --epochs 5 --steps-per-epoch 40 \
  --base-filters 8 --depth 4 --tile 256 --batch-size 8 --lr 2e-3 --dice --precision float32 --workers 1 \
  --cpus-per-worker 2 --val-fraction 0.1 --storage-path $OUT/runs --out $OUT/z21.keras --name z21
PYTHONPATH=. .venv/bin/python bench/tta_resolution.py --data $D --only resolution --threads 2 --model $OUT/z21.keras
