#!/usr/bin/env bash
# Issue 15: a shipped-model candidate (not shipped, see bench/RESULTS.md), fine-tuned from the shipped one on all three cities:
# Kampala train, Zanzibar, and Kathmandu from its OpenStreetMap polygons (unknown outside the AOI), validated
# (best epoch) on Kampala val. Mild blur and colour augmentations only (the strong set did not help,
# bench/RESULTS.md). float32: this CPU has no native bfloat16.
set -eu
cd "$(dirname "$0")/../.."
D=${TILESEG_DATA:-../shared/data}; OUT=${OUT:-/tmp/ship}
.venv/bin/tileseg train --init tileseg/models/default.keras \
  --images $D/kampala/train $D/zanzibar $D/kathmandu/images --masks - - - \
  --labels - - $D/kathmandu/buildings.geojson --aoi - - $D/kathmandu/aoi.geojson --label-field class \
  --val-images $D/kampala/val --source-weights 0.4 0.3 0.3 --epochs 6 --steps-per-epoch 100 --lr 3e-4 \
  --batch-size 8 --dice --precision float32 --aug-blur 1.0 --aug-colour 0.1 --aug-prob 0.3 \
  --workers 1 --cpus-per-worker 2 --seed 0 --out $OUT/shipped.keras --storage-path $OUT/runs --name shipped
