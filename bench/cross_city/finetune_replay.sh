#!/usr/bin/env bash
# Issue 15, acceptance 2, second try: fine-tuning with the source cities replayed. The model shipped before
# Kathmandu was added (Kampala train + Zanzibar, taken from git) is fine-tuned with --init on the polygons of
# the ~20 western Kathmandu tiles (split_kathmandu.py) mixed with its own training cities, so that it learns
# the new place without forgetting buildings; then scored on the eastern tiles it never saw.
#   [LR=2e-4] [SEED=0] finetune_replay.sh [SHARES...]   Kampala / Zanzibar / Kathmandu-west shares
#   (default 0.35 0.15 0.5)
set -eu
cd "$(dirname "$0")/../.."
D=${TILESEG_DATA:-../shared/data}; OUT=${OUT:-/tmp/ftr}; EXP=${EXP:-/tmp/exp}
SHARES=("${@:-0.35 0.15 0.5}"); SHARES=(${SHARES[@]})
EPOCHS=${EPOCHS:-4}; STEPS=${STEPS:-25}; LR=${LR:-2e-4}; SEED=${SEED:-0}
[ -d $EXP/kathmandu_west ] || .venv/bin/python bench/cross_city/split_kathmandu.py
[ -d $EXP/kathmandu_east/masks ] || { echo "rasterise Kathmandu first (rasterise_kathmandu.py, split_kathmandu.py)" >&2; exit 2; }
mkdir -p $OUT
git show a1ff6a5^:tileseg/models/default.keras > $OUT/before.keras
start=$(date +%s)
.venv/bin/tileseg train --init $OUT/before.keras \
  --images $D/kampala/train $D/zanzibar $EXP/kathmandu_west/images --masks - - - \
  --labels - - $D/kathmandu/buildings.geojson --aoi - - $D/kathmandu/aoi.geojson --label-field class \
  --source-weights "${SHARES[@]}" --epochs $EPOCHS --steps-per-epoch $STEPS --lr $LR \
  --batch-size 8 --dice --precision float32 --workers 1 --cpus-per-worker 2 --seed $SEED \
  --out $OUT/after.keras --storage-path $OUT/runs --name ftr
echo "fine-tune wall time: $(( $(date +%s) - start )) s"
for m in before after; do
  echo "$m:"; .venv/bin/python bench/cross_city/score.py $OUT/$m.keras $EXP/kathmandu_east/images $EXP/kathmandu_east/masks
done
