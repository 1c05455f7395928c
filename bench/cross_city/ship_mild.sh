#!/usr/bin/env bash
# Issue 15: a second all-cities candidate (measured in bench/RESULTS.md), milder than ship.sh: fine-tuned
# from the shipped model with the city shares kept close to its own recipe (Kampala 0.7, Zanzibar 0.15,
# Kathmandu 0.15 from its polygons, unknown outside the AOI), lr 2e-4, no augmentations, 5 x 100 steps,
# float32 (this CPU has no native bfloat16). Validation (best epoch) on Kampala val.
set -eu
cd "$(dirname "$0")/../.."
D=${TILESEG_DATA:-../shared/data}; OUT=${OUT:-/tmp/ship2}
.venv/bin/tileseg train --init tileseg/models/default.keras \
  --images $D/kampala/train $D/zanzibar $D/kathmandu/images --masks - - - \
  --labels - - $D/kathmandu/buildings.geojson --aoi - - $D/kathmandu/aoi.geojson --label-field class \
  --val-images $D/kampala/val --source-weights 0.7 0.15 0.15 --epochs 5 --steps-per-epoch 100 --lr 2e-4 \
  --batch-size 8 --dice --precision float32 \
  --workers 1 --cpus-per-worker 2 --seed 0 --out $OUT/cand.keras --storage-path $OUT/runs --name cand
