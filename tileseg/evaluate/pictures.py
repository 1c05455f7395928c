"""Pictures of an evaluation: the confusion-matrix PNG and a quicklook PNG per image.

Quicklooks are drawn from decimated reads only (sampled Zarr chunks, `out_shape` reads of the truth and
the source image), so they cost little whatever the image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr

from tileseg.errors import RasterError
from tileseg.evaluate.truth import TruthSource
from tileseg.mask import NODATA
from tileseg.metrics import ratio

QUICKLOOK_SIZE = 1024
"""Longest side, in pixels, of each quicklook panel."""
QUICKLOOK_GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL block cache (bytes: rasterio passes small integers on as bytes) while quicklooks read."""


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with raw counts annotated, class names on both axes (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = ratio(cm, np.broadcast_to(rows, cm.shape))
    k = len(classes)
    side = max(4.0, 1.1 * k + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    im = ax.imshow(np.nan_to_num(norm, nan=0.0), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of truth row")
    ax.set_xticks(range(k), labels=list(classes), rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title or "confusion matrix (row-normalised)")
    for i in range(k):
        for j in range(k):
            frac = norm[i, j]
            text = f"{cm[i, j]:,}\n" + ("-" if math.isnan(frac) else f"{100 * frac:.1f}%")
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9,
                color="white" if (not math.isnan(frac) and frac > 0.5) else "black",
            )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# Quicklook colours (RGB).
ERROR_COLOURS = {
    "correct (foreground)": (40, 200, 60),
    "false positive": (235, 30, 30),
    "false negative": (30, 110, 255),
    "wrong class": (220, 40, 220),
    "no prediction": (255, 220, 0),
}


def class_palette(k: int) -> np.ndarray:
    """RGB colour per class index (class 0 is drawn transparent in overlays)."""
    base = np.array(
        [
            (128, 128, 128),
            (255, 140, 0),
            (0, 200, 255),
            (255, 0, 160),
            (120, 255, 40),
            (160, 80, 255),
            (255, 255, 0),
            (0, 255, 160),
            (255, 90, 90),
            (90, 90, 255),
        ],
        np.uint8,
    )
    return base[np.arange(max(k, 1)) % len(base)]


def sample_indices(n: int, m: int) -> np.ndarray:
    """Indices of the full-resolution pixels whose centres a nearest read at size m samples (GDAL rule)."""
    return np.minimum(np.floor((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1)


def _quicklook_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """Panel shape: the image shrunk so its longest side is at most max_size."""
    scale = max(height, width) / max_size
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def _to_rgb8(pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """(h, w, C) pixels of any dtype -> (h, w, 3) uint8, 2-98 % stretched unless already 8-bit."""
    px = np.asarray(pixels)
    if px.ndim == 2:
        px = px[..., None]
    px = px[..., :3] if px.shape[2] >= 3 else np.repeat(px[..., :1], 3, axis=2)
    if px.dtype == np.uint8:
        out = px.copy()
    else:
        data = px.astype(np.float64)
        sel = data[valid] if valid is not None and valid.any() else data.reshape(-1, 3)
        sel = sel[np.isfinite(sel).all(axis=-1)] if sel.size else sel
        lo, hi = np.percentile(sel, (2, 98), axis=0) if sel.size else (np.zeros(3), np.ones(3))
        out = np.clip((data - lo) / np.maximum(hi - lo, 1e-12) * 255, 0, 255)
        out = np.nan_to_num(out).astype(np.uint8)
    if valid is not None:
        out[~valid] = 0
    return out


def _read_background(source: str | None, shape: tuple[int, int], notes: list[str]) -> np.ndarray | None:
    """Downsampled RGB of the source image at `shape` (tileseg.raster.read_overview), None if unreadable."""
    from tileseg.raster import read_overview

    if not source or not Path(source).exists():
        notes.append(f"quicklook: source image {source!r} not found, drawn without background")
        return None
    h, w = shape
    try:
        pixels, valid = read_overview(source, max(h, w))
    except RasterError as exc:
        notes.append(f"quicklook: cannot read {source}: {exc}")
        return None
    rgb = _to_rgb8(np.asarray(pixels), None if valid is None else np.asarray(valid, bool))
    if rgb.shape[:2] != (h, w):
        import cv2

        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return rgb


def _blend(base: np.ndarray, where: np.ndarray, colour: Sequence[int], alpha: float) -> None:
    """Paint `colour` over `base` where `where`, with opacity alpha (in place)."""
    base[where] = (base[where] * (1 - alpha) + np.asarray(colour, np.float64) * alpha).astype(np.uint8)


def _panels(
    background: np.ndarray | None,
    pred: np.ndarray,
    truth: np.ndarray | None,
    truth_valid: np.ndarray | None,
    classes: Sequence[str],
) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, Sequence[int]]]]:
    """The quicklook's panels (label, RGB) and legend entries (label, colour)."""
    h, w = pred.shape
    bg = background if background is not None else np.full((h, w, 3), 96, np.uint8)
    grey = bg.mean(axis=2, keepdims=True).astype(np.uint8).repeat(3, axis=2)
    palette = class_palette(max(len(classes), int(pred[pred != NODATA].max(initial=0)) + 1))
    overlay = bg.copy()
    for c in range(1, len(palette)):
        _blend(overlay, pred == c, palette[c], 0.5)
    _blend(overlay, pred == NODATA, ERROR_COLOURS["no prediction"], 0.35)
    panels = [("image", bg), ("prediction", overlay)]
    legend: list[tuple[str, Sequence[int]]] = [(n, palette[i]) for i, n in enumerate(classes) if i > 0]
    if truth is None:
        legend.append(("no prediction", ERROR_COLOURS["no prediction"]))
        return panels, legend
    err = (grey * 0.6).astype(np.uint8)
    ok = truth_valid if truth_valid is not None else np.ones((h, w), bool)
    has_pred = pred != NODATA
    t = truth.astype(np.int64)
    p = pred.astype(np.int64)
    _blend(err, ok & has_pred & (t == p) & (t > 0), ERROR_COLOURS["correct (foreground)"], 0.7)
    _blend(err, ok & has_pred & (t != p) & (t == 0), ERROR_COLOURS["false positive"], 0.8)
    _blend(err, ok & has_pred & (t != p) & (p == 0), ERROR_COLOURS["false negative"], 0.8)
    _blend(err, ok & has_pred & (t != p) & (t > 0) & (p > 0), ERROR_COLOURS["wrong class"], 0.8)
    _blend(err, ok & ~has_pred, ERROR_COLOURS["no prediction"], 0.8)
    panels.append(("errors vs truth", err))
    legend += list(ERROR_COLOURS.items())
    return panels, legend


def _compose(
    panels: list[tuple[str, np.ndarray]], legend: list[tuple[str, Sequence[int]]], title: str
) -> tuple[np.ndarray, list[tuple[str, int, int, int, int]]]:
    """Lay panels side by side under their labels, the legend wrapped below; returns canvas and boxes."""
    import cv2

    h, w = panels[0][1].shape[:2]
    zoom = max(1, math.ceil(320 / max(h, w)))  # tiny chips are enlarged so the labels stay legible
    gap, head = 8, 26
    font, fscale = cv2.FONT_HERSHEY_SIMPLEX, 0.5
    ph, pw = h * zoom, w * zoom
    width = len(panels) * pw + (len(panels) - 1) * gap
    # legend lays out left to right, wrapping at the canvas width
    items, x, rows = [], 0, 0
    for label, colour in legend:
        (tw, _), _ = cv2.getTextSize(label, font, fscale, 1)
        step = 18 + tw + 16
        if x and x + step > width:
            x, rows = 0, rows + 1
        items.append((x, rows, label, colour))
        x += step
    legend_h = (rows + 1) * 22 + 6
    canvas = np.full((head + ph + legend_h, width, 3), 255, np.uint8)
    boxes = []
    for i, (label, img) in enumerate(panels):
        x0 = i * (pw + gap)
        boxes.append((label, head, x0, ph, pw))
        canvas[head : head + ph, x0 : x0 + pw] = np.repeat(np.repeat(img, zoom, axis=0), zoom, axis=1)
        cv2.putText(canvas, label if i else title, (x0 + 4, head - 8), font, fscale, (0, 0, 0), 1, cv2.LINE_AA)
    for x, row, label, colour in items:
        y = head + ph + 6 + row * 22
        canvas[y + 2 : y + 16, x + 4 : x + 18] = colour
        cv2.putText(canvas, label, (x + 22, y + 14), font, fscale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas, boxes


def render_quicklook(
    background: np.ndarray | None,
    pred: np.ndarray,
    truth: np.ndarray | None,
    truth_valid: np.ndarray | None,
    classes: Sequence[str],
    title: str,
) -> tuple[np.ndarray, list[tuple[str, int, int, int, int]]]:
    """Side-by-side RGB panels: image | prediction over image | errors over image (when truth exists).

    Returns the canvas and each panel's (label, row, col, height, width) in it.

    Errors: false positive = foreground predicted on truth background, false negative = truth foreground
    predicted background, wrong class = two foreground classes confused, no prediction = mask NODATA.
    """
    panels, legend = _panels(background, pred, truth, truth_valid, classes)
    return _compose(panels, legend, title)


def write_quicklook(
    mask: zarr.Array,
    truth: TruthSource | None,
    ignore: set[int | float],
    source: str | None,
    classes: Sequence[str],
    path: Path,
    name: str,
    notes: list[str],
    max_size: int = QUICKLOOK_SIZE,
) -> dict[str, Any]:
    """Write `<name>_quicklook.png` from decimated reads only (sampled Zarr chunks, out_shape reads)."""
    import cv2

    height, width = mask.shape
    h, w = _quicklook_shape(height, width, max_size)
    rows, cols = sample_indices(height, h), sample_indices(width, w)
    if h == height and w == width:
        pred = np.asarray(mask[...])
    else:
        pred = np.asarray(mask.get_orthogonal_selection((rows, cols)))
    t = valid = None
    if truth is not None:
        t = truth.read_sampled((h, w))
        valid = np.ones(t.shape, bool)
        if ignore:
            valid &= ~np.isin(t, np.asarray(sorted(ignore), dtype=np.float64))
        if t.dtype.kind == "f":
            valid &= np.isfinite(t)
            t = np.where(valid, t, 0)
    background = _read_background(source, (h, w), notes)
    canvas, boxes = render_quicklook(background, pred, t, valid, classes, name)
    if not cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return {
        "path": str(path),
        "sampled_shape": [h, w],
        "png_shape": list(canvas.shape[:2]),
        "panels": {label: [r, c, ph, pw] for label, r, c, ph, pw in boxes},
    }


def write_quicklooks(
    images: Sequence[Any], classes: dict[str, list[str]], out: Path, notes: list[str]
) -> dict[str, dict[str, Any]]:
    """A quicklook per image plan (`plan.ImagePlan`), keyed by name; notes about sources are appended."""
    # A decimated read of a whole raster passes every block through GDAL's cache, which otherwise
    # grows to 5 % of the machine's RAM before the dataset closes: keep it small meanwhile.
    with rasterio.Env(GDAL_CACHEMAX=QUICKLOOK_GDAL_CACHE_BYTES):
        return {
            p.name: write_quicklook(
                p.mask,
                p.truth.source if p.truth else None,
                set(p.truth.ignore) if p.truth else set(),
                p.source,
                classes[p.name],
                out / f"{p.name}_quicklook.png",
                p.name,
                notes,
            )
            for p in images
        }
