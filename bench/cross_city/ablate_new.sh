#!/usr/bin/env bash
# What the parts of the new recipe buy, on the Kathmandu fold (train Kampala + Zanzibar), same budget.
while ! grep -q DONE /tmp/exp/loco_new.txt 2>/dev/null; do sleep 20; done
cd /tmp/exp/model_code
export PYTHONPATH=/tmp/exp/model_code TF_CPP_MIN_LOG_LEVEL=2
PY="nice /work/main/.venv/bin/python"
K=/work/shared/data/kampala/train; Z=/work/shared/data/zanzibar
common="--arch attention_unet --base-filters 16 --depth 4 --tile 256 --batch-size 8 --epochs 8 --steps-per-epoch 40 --lr 1e-3 --dice --precision mixed_bfloat16 --workers 1 --cpus-per-worker 2 --seed 0 --val-fraction 0.1 --storage-path /tmp/exp/runs"
augs="--aug-scale 2 --aug-blur 1.5 --aug-noise 0.03 --aug-jpeg 30 --aug-colour 0.2 --aug-prob 0.5"
out=/tmp/exp/ablate_new.txt
KT=/work/shared/data/kathmandu
# fine-tuning the OLD recipe's Kathmandu-free model (dataset normalisation, better converged) the same way
start=$(date +%s)
$PY -m tileseg.cli train --images /tmp/exp/kathmandu_west/images --labels $KT/buildings.geojson --aoi $KT/aoi.geojson \
  --label-field class --init /tmp/exp/old_kathmandu.keras --freeze-encoder-epochs 1 --epochs 5 --steps-per-epoch 24 \
  --lr 3e-4 --batch-size 8 --tile 256 --dice --precision mixed_bfloat16 --workers 1 --cpus-per-worker 2 --seed 0 \
  --val-fraction 0.1 --storage-path /tmp/exp/runs --name ft_old_kathmandu --out /tmp/exp/ft_old_kathmandu.keras > /tmp/exp/ft_old_kathmandu.log 2>&1
echo "ft_old_kathmandu train rc=$? $(( $(date +%s) - start )) s" >> $out
$PY /tmp/exp/score.py /tmp/exp/old_kathmandu.keras /tmp/exp/kathmandu_east/images /tmp/exp/kathmandu_east/masks | sed 's/^/old before fine-tuning (east): /' >> $out 2>/dev/null
$PY /tmp/exp/score.py /tmp/exp/ft_old_kathmandu.keras /tmp/exp/kathmandu_east/images /tmp/exp/kathmandu_east/masks | sed 's/^/old after fine-tuning (east): /' >> $out 2>/dev/null
for variant in dataset_norm noaug; do
  case $variant in
    dataset_norm) extra="--normalise dataset $augs --source-weights 1 1";;
    noaug) extra="--normalise tile --source-weights 1 1";;
  esac
  name=abl_${variant}_kathmandu; start=$(date +%s)
  $PY -m tileseg.cli train --images $K $Z $extra --out /tmp/exp/$name.keras --name $name $common > /tmp/exp/$name.log 2>&1
  echo "$name train rc=$? $(( $(date +%s) - start )) s" >> $out
  $PY /tmp/exp/score.py /tmp/exp/$name.keras kathmandu >> $out 2>/dev/null
done
echo DONE >> $out
