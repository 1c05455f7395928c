#!/usr/bin/env bash
# Issue 15: the all-cities fine-tunes in bench/RESULTS.md. Both start from the model shipped before them
# (Kampala train + Zanzibar; taken from git, since tileseg/models/default.keras is now their result) and
# train on Kampala train, Zanzibar and Kathmandu (from its OpenStreetMap polygons, unknown outside the AOI),
# best epoch by Kampala val, float32 (this CPU has no native bfloat16):
#   ship.sh mild    (default) the shipped model: city shares 0.7/0.15/0.15, lr 2e-4, no augmentations,
#                   5 x 100 steps; the last epoch's weights were shipped (see RESULTS for why)
#   ship.sh first   the first candidate, not shipped: shares 0.4/0.3/0.3, lr 3e-4, mild blur and colour,
#                   6 x 100 steps planned (stopped after 4)
set -eu
cd "$(dirname "$0")/../.."
D=${TILESEG_DATA:-../shared/data}; RECIPE=${1:-mild}; OUT=${OUT:-/tmp/ship-$RECIPE}
case $RECIPE in
  mild) recipe=(--source-weights 0.7 0.15 0.15 --epochs 5 --lr 2e-4) ;;
  first) recipe=(--source-weights 0.4 0.3 0.3 --epochs 6 --lr 3e-4 --aug-blur 1.0 --aug-colour 0.1 --aug-prob 0.3) ;;
  *) echo "usage: $0 [mild|first]" >&2; exit 2 ;;
esac
mkdir -p $OUT
git show a1ff6a5^:tileseg/models/default.keras > $OUT/previous.keras
.venv/bin/tileseg train --init $OUT/previous.keras \
  --images $D/kampala/train $D/zanzibar $D/kathmandu/images --masks - - - \
  --labels - - $D/kathmandu/buildings.geojson --aoi - - $D/kathmandu/aoi.geojson --label-field class \
  --val-images $D/kampala/val "${recipe[@]}" --steps-per-epoch 100 \
  --batch-size 8 --dice --precision float32 \
  --workers 1 --cpus-per-worker 2 --seed 0 --out $OUT/$RECIPE.keras --storage-path $OUT/runs --name $RECIPE
