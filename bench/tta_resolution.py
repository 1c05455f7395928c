"""Issue 16 benchmark: building IoU with test-time augmentation and with resampling to the model's GSD.

Every chip is predicted as one block through `tileseg.predict.infer_block`, the function the segment
job's actors run (with `ResampledBlock` for --resample), so the numbers are the job's without Ray's
start-up. Scores come from `tileseg.metrics` (confusion matrix -> class_scores), as in evaluate.

    python bench/tta_resolution.py --data ../shared/data --zanzibar 48 --threads 2

`--only coarse` coarsens the Kampala scene (zoom 21) by area averaging to GSDs past the model's range,
as satellite imagery of the same ground would be, and scores it with and without `--resample auto`
against the native-resolution prediction brought to the same coarse grid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """The mean of each k x k block of `a` (h, w[, c]); h and w are trimmed to multiples of k."""
    h, w = a.shape[0] // k, a.shape[1] // k
    a = a[: h * k, : w * k].astype(np.float64)
    return a.reshape(h, k, w, k, *a.shape[2:]).mean(axis=(1, 3))


def coarse_mask(mask: np.ndarray, k: int) -> np.ndarray:
    """Building where at least half of a k x k block is building; 255 where any of it is nodata."""
    out = (block_mean(mask == 1, k) >= 0.5).astype(np.uint8)
    out[block_mean(mask == 255, k) > 0] = 255
    return out


def write_coarse(src: Path, dst: Path, k: int, *, mask: bool) -> None:
    """`src` coarsened k times (area average for imagery, majority for masks), georeferenced to match."""
    import rasterio
    from rasterio.transform import Affine

    with rasterio.open(src) as r:
        a = r.read()
        profile = r.profile
        transform = r.transform * Affine.scale(k)
    a = np.moveaxis(a, 0, -1)
    out = coarse_mask(a[..., 0], k)[None] if mask else np.moveaxis(np.rint(block_mean(a, k)).astype(a.dtype), -1, 0)
    profile.update(height=out.shape[1], width=out.shape[2], transform=transform, tiled=False)
    profile.pop("blockxsize", None), profile.pop("blockysize", None)
    with rasterio.open(dst, "w", **profile) as w:
        w.write(out)


def iou_of(mask: np.ndarray, pred: np.ndarray) -> float:
    keep = (mask != 255) & (pred != 255)
    return float(class_scores(confusion_matrix(mask, pred, 2, keep=keep)).iou[1])


def coarse(model, data: Path, factors: list[int], threads: int, tmp: Path) -> list[str]:
    """The Kampala scene at `factors` x its GSD: building IoU with no resampling and with `auto`."""
    tiling = TilingSpec(tile=256, overlap=64, batch_size=16)
    pred = warm(TilePredictor(model, batch_size=tiling.batch_size, threads=threads))
    span = pred.meta.gsd_span
    scene = data / "kampala" / "scene"
    image, truth = scene / "kampala_z21_image.tif", scene / "kampala_z21_mask.tif"
    info = open_info(str(image))
    t = read_window(str(truth), Window(0, 0, info.height, info.width))[0][..., 0]
    start = time.perf_counter()
    native = predict_chip(pred, image, tiling, "none", 1.0)
    native_s = time.perf_counter() - start
    out = [
        f"Model GSD range: {span[0]:.4f}-{span[1]:.4f} m/px; scene {info.width}x{info.height} at {info.gsd:.4f} m/px,"
        f" native building IoU {iou_of(t, native):.4f} ({native_s:.1f} s)",
        "",
        "| factor | size | GSD m/px | auto scale | IoU native, on this grid | IoU no resampling | IoU `auto` |"
        " time none / auto |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for k in factors:
        img, msk = tmp / f"scene_x{k}.tif", tmp / f"mask_x{k}.tif"
        write_coarse(image, img, k, mask=False)
        write_coarse(truth, msk, k, mask=True)
        ci = open_info(str(img))
        m = read_window(str(msk), Window(0, 0, ci.height, ci.width))[0][..., 0]
        ref = iou_of(m, coarse_mask(native, k))  # the native prediction, brought to this grid by majority
        scale = auto_scale(ci.gsd, span)
        start = time.perf_counter()
        none = iou_of(m, predict_chip(pred, img, tiling, "none", 1.0))
        none_s = time.perf_counter() - start
        if scale == 1.0:
            row = f"{none:.4f} | (same) | {none_s:.2f} s / same"
        else:
            start = time.perf_counter()
            auto = iou_of(m, predict_chip(pred, img, tiling, "none", scale))
            row = f"{none:.4f} | **{auto:.4f}** | {none_s:.2f} s / {time.perf_counter() - start:.2f} s"
        out.append(f"| {k} | {ci.width}x{ci.height} | {ci.gsd:.4f} | {scale:g} | {ref:.4f} | {row} |")
        print(out[-1], flush=True)
    return out


def coarse_chips(model, chips, levels: list[int], threads: int, tmp: Path) -> list[str]:
    """Kampala's zoom 19/20/21 chips rendered at the GSD of zoom `level` (coarsened 2**(zoom - level)
    times): building IoU with no resampling and with `auto`, against each chip's native prediction
    brought to the same grid."""
    tiling = TilingSpec(tile=256, overlap=64, batch_size=1)
    pred = warm(TilePredictor(model, batch_size=1, threads=threads))
    span = pred.meta.gsd_span
    native = {image: predict_chip(pred, image, tiling, "none", 1.0) for image, _ in chips}
    out = [
        "",
        "| chips rendered at zoom | chips (z19/z20/z21) | GSD m/px | IoU native, on this grid | IoU no resampling"
        " | IoU `auto` |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for level in levels:
        cm = {name: np.zeros((2, 2), np.int64) for name in ("native", "none", "auto")}
        gsds = []
        for image, mask in chips:
            k = 2 ** (zoom(image) - level)
            img, msk = tmp / f"{image.stem}_z{level}.tif", tmp / f"{image.stem}_z{level}_mask.tif"
            write_coarse(image, img, k, mask=False)
            write_coarse(mask, msk, k, mask=True)
            ci = open_info(str(img))
            gsds.append(ci.gsd)
            m = read_window(str(msk), Window(0, 0, ci.height, ci.width))[0][..., 0]
            got = {
                "native": coarse_mask(native[image], k),
                "none": predict_chip(pred, img, tiling, "none", 1.0),
                "auto": predict_chip(pred, img, tiling, "none", auto_scale(ci.gsd, span)),
            }
            for name, p in got.items():
                cm[name] += confusion_matrix(m, p, 2, keep=(m != 255) & (p != 255))
        iou = {name: float(class_scores(c).iou[1]) for name, c in cm.items()}
        counts = "/".join(str(sum(zoom(c[0]) == z for c in chips)) for z in (19, 20, 21))
        out.append(
            f"| {level} | {counts} | {statistics.median(gsds):.4f} | {iou['native']:.4f} | {iou['none']:.4f}"
            f" | **{iou['auto']:.4f}** |"
        )
        print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--zanzibar", type=int, default=48, help="Zanzibar chips (every n-th of the sorted list)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("resolution", "tta", "both", "coarse"), default="both")
    ap.add_argument("--zooms", type=int, nargs="+", default=[19, 20, 21], help="zoom levels for --only resolution")
    ap.add_argument("--model", default=None, help="the artifact (default: the shipped model)")
    ap.add_argument(
        "--set", nargs=2, action="append", default=[], metavar=("NAME", "DIR"),
        help="another set for --only tta: DIR holds images/ and masks/ of the same names (repeatable)",
    )  # fmt: skip
    ap.add_argument("--levels", type=int, nargs="+", default=[18, 17], help="zooms to render chips at (coarse)")
    ap.add_argument("--factors", type=int, nargs="+", default=[2, 4, 8, 16], help="coarsening for --only coarse")
    a = ap.parse_args()
    model = resolve_model(a.model)
    if a.only == "coarse":
        with tempfile.TemporaryDirectory() as tmp:
            lines = coarse(model, a.data, a.factors, a.threads, Path(tmp))
            kampala = a.data / "kampala"
            chips = [
                *pairs(kampala / "train" / "images", kampala / "train" / "masks"),
                *pairs(kampala / "val" / "images", kampala / "val" / "masks"),
            ]
            lines += coarse_chips(model, chips, a.levels, a.threads, Path(tmp))
            print("\n".join(lines))
        return
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
        sets |= {name: pairs(Path(d) / "images", Path(d) / "masks") for name, d in a.set}
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
