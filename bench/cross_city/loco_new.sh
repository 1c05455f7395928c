#!/usr/bin/env bash
# New recipe (model branch, snapshot in /tmp/exp/model_code) at the old recipe's budget, leave one city out;
# Kathmandu from its polygons (--labels/--aoi), never from pre-rasterised masks. Then the fine-tuning run.
while ! grep -q DONE /tmp/exp/loco_old.txt; do sleep 20; done
cd /tmp/exp/model_code
export PYTHONPATH=/tmp/exp/model_code TF_CPP_MIN_LOG_LEVEL=2
PY="nice /work/main/.venv/bin/python"
K=/work/shared/data/kampala/train; Z=/work/shared/data/zanzibar; KT=/work/shared/data/kathmandu
common="--arch attention_unet --base-filters 16 --depth 4 --tile 256 --batch-size 8 --epochs 8 --steps-per-epoch 40 --lr 1e-3 --dice --precision mixed_bfloat16 --workers 1 --cpus-per-worker 2 --seed 0 --val-fraction 0.1 --storage-path /tmp/exp/runs"
new="--normalise tile --aug-scale 2 --aug-blur 1.5 --aug-noise 0.03 --aug-jpeg 30 --aug-colour 0.2 --aug-prob 0.5 --source-weights 1 1"
out=/tmp/exp/loco_new.txt
run() {  # NAME HELD ARGS...
  name=$1; held=$2; shift 2
  start=$(date +%s)
  $PY -m tileseg.cli train "$@" --out /tmp/exp/$name.keras --name $name $common > /tmp/exp/$name.log 2>&1
  echo "$name train rc=$? $(( $(date +%s) - start )) s" >> $out
  [ -n "$held" ] && $PY /tmp/exp/score.py /tmp/exp/$name.keras $held >> $out 2>/dev/null
}
run new_kathmandu kathmandu --images $K $Z $new
# fine-tuning: the Kathmandu-free model on ~20 western Kathmandu tiles (polygons), scored on the eastern part
$PY /tmp/exp/score.py /tmp/exp/new_kathmandu.keras /tmp/exp/kathmandu_east/images /tmp/exp/kathmandu_east/masks | sed 's/^/before fine-tuning (east): /' >> $out 2>/dev/null
start=$(date +%s)
$PY -m tileseg.cli train --images /tmp/exp/kathmandu_west/images --labels $KT/buildings.geojson --aoi $KT/aoi.geojson \
  --label-field class --init /tmp/exp/new_kathmandu.keras --freeze-encoder-epochs 1 --epochs 5 --steps-per-epoch 24 \
  --lr 3e-4 --batch-size 8 --tile 256 --dice --precision mixed_bfloat16 --workers 1 --cpus-per-worker 2 --seed 0 \
  --val-fraction 0.1 --aug-scale 2 --aug-blur 1.5 --aug-noise 0.03 --aug-jpeg 30 --aug-colour 0.2 --aug-prob 0.5 \
  --storage-path /tmp/exp/runs --name ft_kathmandu --out /tmp/exp/ft_kathmandu.keras > /tmp/exp/ft_kathmandu.log 2>&1
echo "ft_kathmandu train rc=$? $(( $(date +%s) - start )) s" >> $out
$PY /tmp/exp/score.py /tmp/exp/ft_kathmandu.keras /tmp/exp/kathmandu_east/images /tmp/exp/kathmandu_east/masks | sed 's/^/after fine-tuning (east): /' >> $out 2>/dev/null
run new_zanzibar zanzibar --images $K $KT/images --labels - $KT/buildings.geojson --aoi - $KT/aoi.geojson --label-field class $new
run new_kampala kampala --images $Z $KT/images --labels - $KT/buildings.geojson --aoi - $KT/aoi.geojson --label-field class $new
echo DONE >> $out
