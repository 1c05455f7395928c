"""Building IoU of a model on a city's image/mask chips (255 = unknown), chips predicted whole."""

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's tileseg
from tileseg.grid import Window  # noqa: E402
from tileseg.metrics import class_scores, confusion_matrix  # noqa: E402
from tileseg.predict import TilePredictor  # noqa: E402
from tileseg.raster import open_info, read_window  # noqa: E402

CITIES = {
    "kampala": [
        ("/work/shared/data/kampala/train/images", "/work/shared/data/kampala/train/masks"),
        ("/work/shared/data/kampala/val/images", "/work/shared/data/kampala/val/masks"),
    ],
    "zanzibar": [("/work/shared/data/zanzibar/images", "/work/shared/data/zanzibar/masks")],
    "kathmandu": [("/tmp/exp/kathmandu/images", "/tmp/exp/kathmandu/masks")],
}


def score(model, city, threads=2):
    pred = TilePredictor(model, batch_size=8, threads=threads)
    cm = np.zeros((2, 2), np.int64)
    for idir, mdir in CITIES[city]:
        masks = {os.path.splitext(f)[0]: os.path.join(mdir, f) for f in os.listdir(mdir)}
        for f in sorted(os.listdir(idir)):
            stem = os.path.splitext(f)[0]
            if stem not in masks:
                continue
            info = open_info(os.path.join(idir, f))
            img, valid = read_window(
                os.path.join(idir, f), Window(0, 0, info.height, info.width), bands=pred.meta.bands
            )
            m, mv = read_window(masks[stem], Window(0, 0, info.height, info.width))
            m = m[..., 0]
            p = pred(img[None])[0].argmax(-1)
            keep = valid & mv & (m != 255)
            cm += confusion_matrix(m, p, 2, keep=keep)
    s = class_scores(cm)
    return {
        "model": model,
        "city": city,
        "building_iou": round(float(s.iou[1]), 4),
        "precision": round(float(s.precision[1]), 4),
        "recall": round(float(s.recall[1]), 4),
        "miou": round(s.mean_iou, 4),
        "pixels": int(cm.sum()),
    }


if __name__ == "__main__":
    if len(sys.argv) == 4:  # MODEL IMAGES_DIR MASKS_DIR: a custom part of a city
        CITIES["custom"] = [(sys.argv[2], sys.argv[3])]
        sys.argv[2] = "custom"
    print(json.dumps(score(sys.argv[1], sys.argv[2])))
