"""Issue 16 benchmark: building IoU with test-time augmentation and with resampling to the model's GSD.

Every chip is predicted as one block through `tileseg.predict.infer_block`, the function the segment
job's actors run (with `ResampledBlock` for --resample), so the numbers are the job's without Ray's
start-up. Scores come from `tileseg.metrics` (confusion matrix -> class_scores), as in evaluate.

    python bench/tta_resolution.py --data ../shared/data --zanzibar 48 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tileseg
from tileseg.artifact import resolve_model  # noqa: E402
from tileseg.grid import Window  # noqa: E402
from tileseg.metrics import class_scores, confusion_matrix  # noqa: E402
from tileseg.predict import TilePredictor, infer_block  # noqa: E402
from tileseg.raster import open_info, read_window  # noqa: E402
from tileseg.resample import ResampledBlock, auto_scale  # noqa: E402
from tileseg.stitch import TilingSpec  # noqa: E402
from tileseg.tta import TTA_MODES  # noqa: E402


def pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    by_stem = {p.stem: p for p in masks.iterdir()}
    return [(p, by_stem[p.stem]) for p in sorted(images.iterdir()) if p.stem in by_stem]


def zoom(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def predict_chip(pred: TilePredictor, path: Path, tiling: TilingSpec, tta: str, scale: float) -> np.ndarray:
    """The chip's mask as the job makes it: one block, TTA, and the model grid at `scale`."""
    info = open_info(str(path))
    (block,) = tiling.plan(info.height, info.width, block=None, chunk=1)
    rb = None
    if scale != 1.0:
        rb = ResampledBlock.plan(0, block.region, info.height, info.width, scale, tiling.tile, tiling.overlap)
    pixels, valid = read_window(str(path), rb.read if rb else block.read, bands=pred.meta.bands)
    return infer_block(pred, pixels, valid, block, tiling, tta=tta, resampled=rb).mask


def warm(pred: TilePredictor, tile: int = 256) -> TilePredictor:
    """Run one batch so that graph tracing is not timed."""
    pred(np.zeros((pred.batch_size, tile, tile, pred.meta.num_bands), np.float32))
    return pred


def score(pred, chips, tiling, tta="none", scale_of=lambda p: 1.0) -> dict:
    cm = np.zeros((2, 2), np.int64)
    start = time.perf_counter()
    for image, mask in chips:
        p = predict_chip(pred, image, tiling, tta, scale_of(image))
        info = open_info(str(mask))
        m, mv = read_window(str(mask), Window(0, 0, info.height, info.width))
        m = m[..., 0]
        keep = mv & (m != 255) & (p != 255)
        cm += confusion_matrix(m, p, 2, keep=keep)
    s = class_scores(cm)
    return {"iou": float(s.iou[1]), "seconds": time.perf_counter() - start, "chips": len(chips)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--zanzibar", type=int, default=48, help="Zanzibar chips (every n-th of the sorted list)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("resolution", "tta", "both"), default="both")
    ap.add_argument("--zooms", type=int, nargs="+", default=[19, 20, 21], help="zoom levels for --only resolution")
    ap.add_argument("--model", default=None, help="the artifact (default: the shipped model)")
    a = ap.parse_args()
    model = resolve_model(a.model)
    # One tile per model call (x the transforms, as the actor does): a chip holds few tiles, and a padded
    # batch would cost the same whatever the TTA, hiding its price.
    tiling = TilingSpec(tile=256, overlap=64, batch_size=1)
    out = [f"Model: {model.name}; tile 256, overlap 64, gaussian blend; threads {a.threads}."]
    kampala = a.data / "kampala"
    train = pairs(kampala / "train" / "images", kampala / "train" / "masks")
    val = pairs(kampala / "val" / "images", kampala / "val" / "masks")

    if a.only in ("resolution", "both"):
        pred = warm(TilePredictor(model, batch_size=tiling.batch_size, threads=a.threads))
        span = pred.meta.gsd_span  # what `--resample auto` resamples to (tileseg.resample.auto_scale)
        if span is None:  # the artifact records none: the median GSD of its training chips
            g = statistics.median(open_info(str(p)).gsd for p, _ in train)
            span = (g, g)
            out.append(f"Training GSD (median ImageInfo.gsd of kampala/train, {len(train)} chips): {g:.4f} m/px")
        out.append(f"Model GSD range: {span[0]:.4f}-{span[1]:.4f} m/px")
        chips = train + val
        out += ["", "| zoom | chips | GSD m/px | auto factor | building IoU none | building IoU auto | time ratio |"]
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for z in a.zooms:
            zc = [c for c in chips if zoom(c[0]) == z]
            gsd = statistics.median(open_info(str(p)).gsd for p, _ in zc)
            factor = auto_scale(gsd, span)
            base = score(pred, zc, tiling)
            if factor == 1.0:  # inside the model's range: auto is the image's own grid, the same mask
                out.append(f"| {z} | {len(zc)} | {gsd:.4f} | 1 | {base['iou']:.4f} | (same) | 1.00 |")
                continue
            res = score(pred, zc, tiling, scale_of=lambda p, s=span: auto_scale(open_info(str(p)).gsd, s))
            ratio = res["seconds"] / base["seconds"]
            out.append(
                f"| {z} | {len(zc)} | {gsd:.4f} | {factor:g} | {base['iou']:.4f} | {res['iou']:.4f} | {ratio:.2f} |"
            )
            print("\n".join(out), flush=True)

    if a.only in ("tta", "both"):
        zan = pairs(a.data / "zanzibar" / "images", a.data / "zanzibar" / "masks")
        step = max(1, len(zan) // a.zanzibar)
        sets = {"kampala val": val, f"zanzibar (every {step}th)": zan[::step][: a.zanzibar]}
        out += [
            "",
            "| set | chips | TTA | building IoU | gain vs none | time ratio vs none |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for name, chips in sets.items():
            base = None
            for mode, ks in TTA_MODES.items():
                pred = warm(TilePredictor(model, batch_size=tiling.batch_size * len(ks), threads=a.threads))
                r = score(pred, chips, tiling, tta=mode)
                base = base or r
                gain = r["iou"] - base["iou"]
                ratio = r["seconds"] / base["seconds"]
                out.append(f"| {name} | {len(chips)} | {mode} | {r['iou']:.4f} | {gain:+.4f} | {ratio:.2f} |")
                print(out[-1], flush=True)
    print("\n".join(out))


if __name__ == "__main__":
    main()
