"""Out-of-core evaluation of a prediction store against ground-truth rasters.

The prediction `mask` of every image group is read chunk by chunk with Dask; each task reads the matching
window of the truth (directly when it shares the prediction's grid, through a nearest-neighbour
`WarpedVRT` onto the prediction grid otherwise) and returns a small confusion matrix. The matrices are
summed by a Dask tree reduction, so memory stays bounded by a few chunks whatever the image size.

Conventions (also written into `metrics.md`):
- rows of a confusion matrix are truth classes, columns are predicted classes;
- a pixel counts when its truth value is not ignored and the prediction has a value (mask 255 = no
  prediction); truth pixels without a prediction are excluded from the metrics but reported as
  `no_prediction`, so an unfinished store cannot hide behind good scores;
- mIoU / mean Dice average over the classes present in the truth or in the prediction (a class with
  TP + FP + FN = 0 has an undefined IoU and is left out, never counted as 0 or 1).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from tileseg import store as tstore
from tileseg.errors import EvaluationError
from tileseg.jsonio import json_safe
from tileseg.mask import NODATA
from tileseg.metrics import class_scores, ratio
from tileseg.raster import RASTER_EXTENSIONS

PRED_NODATA = NODATA
"""Value of the prediction mask where no prediction was written."""
DEFAULT_IGNORE = (NODATA,)
"""Truth values excluded by default (the truth raster's own nodata value is always excluded too)."""
RASTER_SUFFIXES = RASTER_EXTENSIONS
"""File suffixes considered truth rasters when `truth` is a directory (those `segment` reads)."""
TARGET_BLOCK_PIXELS = 2**21
"""Pixels per Dask task: whole Zarr chunks grouped up to about this many (2 MPix, a few MiB per task)."""
MAX_LISTED = 20
"""Unmatched truth files named in the Markdown report (all of them are in metrics.json)."""
QUICKLOOK_SIZE = 1024
"""Longest side, in pixels, of each quicklook panel."""
QUICKLOOK_GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL block cache (bytes: rasterio passes small integers on as bytes) while quicklooks read."""

_TRUTH_SUFFIX = re.compile(
    r"_(mask|masks|label|labels|truth|gt|ground_truth|groundtruth|annotation|annotations|reference|ref)$"
)
_IMAGE_SUFFIX = re.compile(r"_(image|images|img|rgb|ortho|orthophoto|scene)$")


class EvaluationWarning(UserWarning):
    """Something was evaluated under an assumption worth knowing (also listed in the report)."""


# --------------------------------------------------------------------------------------------------
# Store access (the layout and its readers live in tileseg.store).
# --------------------------------------------------------------------------------------------------


def _store_ref(store: str | Path | zarr.Group) -> Any:
    """What tileseg.store's readers take: a path string, or the zarr store under an open root group."""
    if isinstance(store, zarr.Group):
        if store.path:
            raise EvaluationError("pass the store's root group (or its path), not a sub-group")
        return store.store
    path = Path(store)
    if not path.exists():
        raise EvaluationError(f"prediction store not found: {path}")
    return str(path)


# --------------------------------------------------------------------------------------------------
# Matching truth files to image groups.
# --------------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    """Case-fold and collapse every run of non-alphanumerics to `_` (what a "safe" stem may have done)."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def _truth_files(truth: Path) -> list[Path]:
    """Raster files directly inside a truth directory (sidecars such as .aux.xml/.ovr are skipped)."""
    return sorted(
        p for p in truth.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in RASTER_SUFFIXES
    )


def match_truth(
    groups: dict[str, str | None], files: Sequence[Path]
) -> tuple[dict[str, Path], list[str], list[Path], dict[str, list[str]]]:
    """Pair image groups with truth files by name, never guessing between two candidates.

    `groups` maps group name -> source image path (or None). Tiers, each over what is still unpaired:
    exact stem (case-insensitive, group name or source stem); normalised stems (non-alphanumerics -> _);
    the file's stem without a truth suffix (`_mask`, `-label`, ...); that against the group's stem without
    an image suffix (`_image`, `_rgb`, ...). A group with several candidates at a tier, or a file wanted
    by several groups, is reported ambiguous, not paired.
    Returns (matches, unmatched groups, unmatched files, ambiguous group -> candidate file names).
    """

    def group_keys(name: str, source: str | None, tier: int) -> set[str]:
        stems = {name} | ({Path(source).stem} if source else set())
        if tier == 0:
            return {s.lower() for s in stems}
        keys = {_norm(s) for s in stems}
        return keys if tier < 3 else {_IMAGE_SUFFIX.sub("", k) for k in keys}

    def file_key(path: Path, tier: int) -> str:
        if tier == 0:
            return path.stem.lower()
        return _norm(path.stem) if tier == 1 else _TRUTH_SUFFIX.sub("", _norm(path.stem))

    matches: dict[str, Path] = {}
    ambiguous: dict[str, list[str]] = {}
    free_groups = dict(groups)
    free_files = list(files)
    for tier in range(4):
        cands: dict[str, list[Path]] = {}
        for name, source in free_groups.items():
            keys = group_keys(name, source, tier)
            cands[name] = [f for f in free_files if file_key(f, tier) in keys]
        takers: dict[Path, list[str]] = {}
        for name, found in cands.items():
            for f in found:
                takers.setdefault(f, []).append(name)
        for name, found in cands.items():
            if len(found) > 1:
                ambiguous[name] = [f.name for f in found]
                del free_groups[name]
            elif len(found) == 1:
                if len(takers[found[0]]) > 1:
                    ambiguous[name] = [
                        found[0].name + " (also claimed by " + ", ".join(n for n in takers[found[0]] if n != name) + ")"
                    ]
                    del free_groups[name]
                    continue
                matches[name] = found[0]
                del free_groups[name]
                free_files.remove(found[0])
    unmatched_groups = sorted(free_groups)
    return matches, unmatched_groups, free_files, ambiguous


# --------------------------------------------------------------------------------------------------
# Truth access on the prediction grid.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruthSource:
    """How to read a truth raster on the prediction grid: plain windows, or a nearest WarpedVRT.

    Picklable plain data, so Dask threads and Ray workers each open their own dataset (rasterio
    datasets are not thread-safe and cannot be shipped between processes).
    """

    path: str
    band: int
    warp: bool
    crs_wkt: str | None
    transform: tuple[float, ...]
    height: int
    width: int
    fill: float

    @contextmanager
    def open(
        self, transform: Affine | None = None, shape: tuple[int, int] | None = None
    ) -> Iterator[rasterio.io.DatasetReaderBase]:
        """Open the truth on the prediction grid (or, for quicklooks, on a coarser grid over it)."""
        with rasterio.open(self.path) as src:
            if not self.warp:
                yield src
                return
            height, width = shape or (self.height, self.width)
            with WarpedVRT(
                src,
                crs=CRS.from_wkt(self.crs_wkt) if self.crs_wkt else src.crs,
                transform=transform or Affine(*self.transform),
                width=width,
                height=height,
                resampling=Resampling.nearest,
                nodata=self.fill,
            ) as vrt:
                yield vrt

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Truth values of the prediction window rows x cols (half-open pixel ranges)."""
        window = Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
        with self.open() as ds:
            return ds.read(self.band, window=window)

    def read_sampled(self, shape: tuple[int, int]) -> np.ndarray:
        """Nearest sample of the whole truth at `shape`, on the same pixel centres as `_sample_indices`."""
        h, w = shape
        if not self.warp:
            with self.open() as ds:
                return ds.read(self.band, out_shape=(h, w), resampling=Resampling.nearest)
        coarse = Affine(*self.transform) @ Affine.scale(self.width / w, self.height / h)
        with self.open(transform=coarse, shape=(h, w)) as ds:
            return ds.read(self.band)


def _grid_corners(transform: Affine, height: int, width: int) -> np.ndarray:
    """World coordinates of the four corners of a grid, shape (4, 2)."""
    return np.array([transform @ (c, r) for r, c in ((0, 0), (0, width), (height, 0), (height, width))])


def _same_transform(t1: Affine, t2: Affine) -> bool:
    """Whether two affine transforms agree to a thousandth of a pixel."""
    scale = max(abs(t1.a), abs(t1.b), abs(t1.d), abs(t1.e)) or 1.0
    return bool(np.allclose(np.array(t1)[:6] / scale, np.array(t2)[:6] / scale, rtol=0, atol=1e-3))


def plan_truth(
    truth_path: Path,
    name: str,
    pred_crs_wkt: str | None,
    pred_transform: Sequence[float],
    pred_shape: tuple[int, int],
    ignore: set[int | float],
) -> tuple[TruthSource, set[int | float], str, list[str]]:
    """Decide how the truth is brought onto the prediction grid; refuse what cannot be aligned.

    Returns (source, effective ignore set, alignment description, warnings). The truth's nodata value
    joins the ignore set; when warping, pixels outside the truth are filled with an ignored value.
    """
    notes: list[str] = []
    try:
        src_ctx = rasterio.open(truth_path)
    except rasterio.errors.RasterioIOError as exc:
        raise EvaluationError(f"cannot open truth raster {truth_path}: {exc}") from exc
    with src_ctx as src:
        t_crs, t_transform, t_shape = src.crs, src.transform, (src.height, src.width)
        nodata, count, t_bounds = src.nodata, src.count, src.bounds
    if count > 1:
        notes.append(f"{truth_path.name}: {count} bands, band 1 used as truth")
    ignore = set(ignore)
    if nodata is not None and math.isfinite(nodata):
        ignore.add(int(nodata) if float(nodata).is_integer() else nodata)
    p_crs = CRS.from_user_input(pred_crs_wkt) if pred_crs_wkt else None
    p_transform = Affine(*pred_transform[:6])
    height, width = pred_shape
    where = f"prediction '{name}' ({width}x{height}) vs truth {truth_path} ({t_shape[1]}x{t_shape[0]})"

    def direct(how: str) -> tuple[TruthSource, set[int | float], str, list[str]]:
        src = TruthSource(str(truth_path), 1, False, None, tuple(p_transform)[:6], height, width, 0)
        return src, ignore, how, notes

    if p_crs is None or t_crs is None:
        if t_shape != (height, width):
            who = (
                "neither has a CRS"
                if p_crs is None and t_crs is None
                else ("the truth has no CRS" if t_crs is None else "the prediction has no CRS")
            )
            raise EvaluationError(f"cannot align {where}: {who} and the shapes differ")
        if p_crs is None and t_crs is None and not _same_transform(p_transform, t_transform):
            notes.append(f"{name}: no CRS on either side and transforms differ; compared pixel for pixel")
        elif (p_crs is None) != (t_crs is None):
            notes.append(
                f"{name}: {'truth' if t_crs is None else 'prediction'} has no CRS; same shape, compared pixel for pixel"
            )
        return direct("pixel-aligned (no CRS, same shape)")
    if p_crs == t_crs and t_shape == (height, width) and _same_transform(p_transform, t_transform):
        return direct("same grid")

    # Different grids: make sure they overlap at all before warping.
    from rasterio.warp import transform_bounds

    corners = _grid_corners(p_transform, height, width)
    p_bounds = (corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max())
    try:
        b = transform_bounds(p_crs, t_crs, *p_bounds, densify_pts=21)
    except Exception as exc:  # noqa: BLE001 - pyproj/GDAL errors come in many types
        raise EvaluationError(
            f"cannot align {where}: prediction bounds do not transform to the truth CRS ({exc})"
        ) from exc
    if (
        not all(map(math.isfinite, b))
        or b[0] >= t_bounds.right
        or b[2] <= t_bounds.left
        or (b[1] >= t_bounds.top or b[3] <= t_bounds.bottom)
    ):
        raise EvaluationError(
            f"cannot align {where}: the grids do not intersect (prediction bounds in the "
            f"truth CRS {tuple(round(v, 6) for v in b)}, truth bounds {tuple(t_bounds)})"
        )
    if nodata is not None and math.isfinite(nodata):
        fill: float = nodata
    else:
        fill = 255 if (255 in ignore or not ignore) else min(ignore)
        ignore.add(fill)
    src = TruthSource(str(truth_path), 1, True, p_crs.to_wkt(), tuple(p_transform)[:6], height, width, fill)
    how = "same CRS, other grid" if p_crs == t_crs else f"reprojected from {t_crs.to_string()}"
    return src, ignore, how + " (nearest, WarpedVRT)", notes


# --------------------------------------------------------------------------------------------------
# Chunked confusion matrices.
# --------------------------------------------------------------------------------------------------


def _block_confusion(
    pred: np.ndarray,
    truth: TruthSource,
    ignore: tuple[float, ...],
    nbins: int,
    block_info: dict | None = None,
) -> np.ndarray:
    """Confusion counts of one chunk, shape (1, 1, nbins + 1, nbins + 2).

    Truth index nbins = a (non-ignored) value outside [0, nbins); prediction index nbins = out of range,
    nbins + 1 = no prediction (255). Pixels whose truth is ignored are not counted at all.
    """
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    t = truth.read((r0, r1), (c0, c1))
    keep = ~np.isin(t, np.asarray(ignore, dtype=np.float64)) if ignore else np.ones(t.shape, bool)
    if t.dtype.kind == "f":
        keep &= np.isfinite(t)
    t = t[keep]
    p = pred[keep]
    if t.dtype.kind == "f":
        ti = np.where((t >= 0) & (t < nbins) & (t == np.floor(t)), t, nbins).astype(np.int64)
    else:
        ti = np.where((t >= 0) & (t < nbins), t, nbins).astype(np.int64)
    pi = np.where(p == PRED_NODATA, nbins + 1, np.where(p < nbins, p, nbins)).astype(np.int64)
    counts = np.bincount(ti * (nbins + 2) + pi, minlength=(nbins + 1) * (nbins + 2))
    return counts.reshape(1, 1, nbins + 1, nbins + 2)


def _eval_chunks(mask: zarr.Array) -> tuple[int, int]:
    """Dask chunk shape: whole Zarr chunks, grouped up to about TARGET_BLOCK_PIXELS."""
    cy, cx = mask.chunks
    f = max(1, int(math.sqrt(TARGET_BLOCK_PIXELS / (cy * cx))))
    return min(cy * f, mask.shape[0]), min(cx * f, mask.shape[1])


@dataclass(frozen=True)
class MaskHandle:
    """Picklable, lazily opened stand-in for a store's `mask` that Dask slices like the Zarr array.

    Only the store path and group name travel in the task graph, so Ray workers reopen the array
    themselves (a zarr.Array carries codec objects that do not survive Ray's pickling).
    """

    store: str
    name: str
    shape: tuple[int, int]
    chunks: tuple[int, int]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Always 2: (y, x)."""
        return 2

    def __getitem__(self, key: Any) -> np.ndarray:
        # opened per read (two small JSON files): never stale if the store is rewritten between runs
        return np.asarray(tstore.open_mask(self.store, self.name)[key])


def confusion_graph(mask: zarr.Array | MaskHandle, truth: TruthSource, ignore: set[int | float], nbins: int) -> Any:
    """Lazy Dask array of the summed (nbins+1, nbins+2) confusion counts of one image."""
    import dask.array as da
    from dask.base import tokenize

    name = "tileseg-mask-" + tokenize(
        getattr(mask, "store", None),
        getattr(mask, "name", None),
        mask.shape,
        id(mask) if isinstance(mask, zarr.Array) else None,
    )
    pred = da.from_array(mask, chunks=_eval_chunks(mask), name=name, asarray=False, fancy=False)
    nby, nbx = pred.numblocks
    blocks = pred.map_blocks(
        _block_confusion,
        truth=truth,
        ignore=tuple(sorted(ignore)),
        nbins=nbins,
        new_axis=[2, 3],
        chunks=((1,) * nby, (1,) * nbx, (nbins + 1,), (nbins + 2,)),
        dtype=np.int64,
        meta=np.empty((0, 0, 0, 0), dtype=np.int64),
    )
    return blocks.sum(axis=(0, 1), dtype=np.int64, split_every=8)


def _compute(graphs: list[Any], scheduler: str) -> list[np.ndarray]:
    """Compute the per-image graphs together with the chosen Dask scheduler."""
    import dask

    if scheduler == "ray":
        import ray
        from ray.util.dask import ray_dask_get

        started = not ray.is_initialized()
        if started:
            ray.init(include_dashboard=False, ignore_reinit_error=True)
        try:
            return list(dask.compute(*graphs, scheduler=ray_dask_get))
        finally:
            if started:
                ray.shutdown()
    if scheduler in ("threads", "sync", "synchronous"):
        return list(dask.compute(*graphs, scheduler="threads" if scheduler == "threads" else "sync"))
    raise ValueError(f"unknown scheduler {scheduler!r}: use 'threads' or 'ray'")


# --------------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------------


def confusion_metrics(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class IoU, Dice/F1, precision, recall, support; pixel accuracy, mIoU and mean Dice.

    `cm[i, j]` counts truth class i predicted as j. Undefined ratios are NaN. The means run over the
    classes present in the truth or the prediction (TP + FP + FN > 0).
    """
    cm = np.asarray(cm, dtype=np.int64)
    s = class_scores(cm)
    per_class = {
        name: {
            "iou": float(s.iou[i]),
            "dice": float(s.dice[i]),
            "precision": float(s.precision[i]),
            "recall": float(s.recall[i]),
            "support": int(s.tp[i] + s.fn[i]),
            "predicted": int(s.tp[i] + s.fp[i]),
            "tp": int(s.tp[i]),
            "fp": int(s.fp[i]),
            "fn": int(s.fn[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "pixel_accuracy": s.pixel_accuracy,
        "mean_iou": s.mean_iou,
        "mean_dice": s.mean_dice,
        "classes_in_mean": [classes[i] for i in np.flatnonzero(s.present)],
        "evaluated": s.evaluated,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def _split_counts(full: np.ndarray, nbins: int, k: int) -> dict[str, Any]:
    """Separate the raw chunk counts into the K x K confusion matrix and the side counts."""
    return {
        "cm": full[:k, :k],
        "no_prediction": int(full[:k, nbins + 1].sum()),
        "no_prediction_by_class": full[:k, nbins + 1],
        "truth_out_of_range": int(full[nbins, :].sum()),
        "pred_out_of_range": int(full[:nbins, nbins].sum()),
        "counted": int(full.sum()),
    }


# --------------------------------------------------------------------------------------------------
# Reports and pictures.
# --------------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    """A metric for a table: four decimals, or '-' when undefined."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _class_table(metrics: dict[str, Any]) -> list[str]:
    """Markdown rows of the per-class table of one metrics dict."""
    lines = ["| class | IoU | Dice | precision | recall | support |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in metrics["per_class"].items():
        lines.append(
            f"| {name} | {_fmt(m['iou'])} | {_fmt(m['dice'])} | {_fmt(m['precision'])} | "
            f"{_fmt(m['recall'])} | {m['support']:,} |"
        )
    return lines


def markdown_report(result: dict[str, Any]) -> str:
    """The Markdown summary: overall per-class table, per-image summary, and what was not evaluated."""
    overall = result["overall"]
    images = result["images"]
    lines = [f"# Evaluation of {result['store']}", "", f"Truth: {result['truth']}", ""]
    plural = "s" if len(images) != 1 else ""
    lines += [f"## Overall ({len(images)} image{plural}, confusion matrices summed)", ""]
    lines += _class_table(overall)
    lines += [
        "",
        f"- pixel accuracy: {_fmt(overall['pixel_accuracy'])}",
        f"- mIoU: {_fmt(overall['mean_iou'])} (mean over classes present in truth or prediction: "
        f"{', '.join(overall['classes_in_mean']) or 'none'})",
        f"- mean Dice: {_fmt(overall['mean_dice'])}",
        f"- pixels evaluated: {overall['evaluated']:,}; truth pixels with no prediction (excluded): "
        f"{overall['no_prediction']:,}; ignored truth pixels: {overall['ignored']:,}",
    ]
    if overall["truth_out_of_range"] or overall["pred_out_of_range"]:
        lines.append(
            f"- values outside the class list (excluded): truth {overall['truth_out_of_range']:,}, "
            f"prediction {overall['pred_out_of_range']:,}"
        )
    if images:
        names = result["classes"]
        lines += [
            "",
            "## Per image",
            "",
            "| image | pixel acc. | mIoU | " + " | ".join(f"IoU {c}" for c in names) + " | no prediction | alignment |",
            "|---|---:|---:|" + "---:|" * len(names) + "---:|---|",
        ]
        for name, m in images.items():
            ious = [_fmt(m["per_class"][c]["iou"]) if c in m["per_class"] else "-" for c in names]
            lines.append(
                f"| {name} | {_fmt(m['pixel_accuracy'])} | {_fmt(m['mean_iou'])} | "
                + " | ".join(ious)
                + f" | {m['no_prediction']:,} | {m['alignment']} |"
            )
    if result["unmatched_groups"] or result["ambiguous"] or result["unmatched_truth"]:
        lines += ["", "## Not evaluated", ""]
        for name in result["unmatched_groups"]:
            lines.append(f"- image group `{name}`: no truth file matched")
        for name, cands in result["ambiguous"].items():
            lines.append(f"- image group `{name}`: ambiguous truth ({', '.join(cands)})")
        unused = result["unmatched_truth"]
        shown = ", ".join(f"`{Path(p).name}`" for p in unused[:MAX_LISTED])
        if unused:
            extra = len(unused) - MAX_LISTED
            more = f" and {extra} more (all in metrics.json)" if extra > 0 else ""
            lines.append(f"- {len(unused)} truth file(s) matched no image group: {shown}{more}")
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    lines += [
        "",
        "Rows of confusion matrices are truth, columns prediction. Truth pixels whose prediction "
        "is 255 (no prediction) are excluded from the metrics and counted apart.",
    ]
    return "\n".join(lines) + "\n"


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


def _sample_indices(n: int, m: int) -> np.ndarray:
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
    """Downsampled RGB of the source image at `shape`, via tileseg.raster.read_overview when available."""
    if not source or not Path(source).exists():
        notes.append(f"quicklook: source image {source!r} not found, drawn without background")
        return None
    h, w = shape
    try:
        from tileseg.raster import read_overview

        pixels, valid = read_overview(source, max(h, w))
        rgb = _to_rgb8(np.asarray(pixels), None if valid is None else np.asarray(valid, bool))
    except Exception:  # noqa: BLE001 - the helper may not exist yet or refuse the file: use rasterio
        try:
            with rasterio.open(source) as src:
                bands = [1, 2, 3] if src.count >= 3 else [1]
                data = src.read(bands, out_shape=(len(bands), h, w), resampling=Resampling.nearest)
                valid = src.dataset_mask(out_shape=(h, w), resampling=Resampling.nearest) > 0
            rgb = _to_rgb8(np.moveaxis(data, 0, -1), valid)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"quicklook: cannot read {source}: {exc}")
            return None
    if rgb.shape[:2] != (h, w):
        import cv2

        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return rgb


def _blend(base: np.ndarray, where: np.ndarray, colour: Sequence[int], alpha: float) -> None:
    """Paint `colour` over `base` where `where`, with opacity alpha (in place)."""
    base[where] = (base[where] * (1 - alpha) + np.asarray(colour, np.float64) * alpha).astype(np.uint8)


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
    predicted background, wrong class = two foreground classes confused, no prediction = mask 255.
    """
    import cv2

    h, w = pred.shape
    bg = background if background is not None else np.full((h, w, 3), 96, np.uint8)
    grey = bg.mean(axis=2, keepdims=True).astype(np.uint8).repeat(3, axis=2)
    palette = class_palette(max(len(classes), int(pred[pred != PRED_NODATA].max(initial=0)) + 1))
    overlay = bg.copy()
    for c in range(1, len(palette)):
        _blend(overlay, pred == c, palette[c], 0.5)
    _blend(overlay, pred == PRED_NODATA, ERROR_COLOURS["no prediction"], 0.35)
    panels = [("image", bg), ("prediction", overlay)]
    legend: list[tuple[str, Sequence[int]]] = [(n, palette[i]) for i, n in enumerate(classes) if i > 0]
    if truth is not None:
        err = (grey * 0.6).astype(np.uint8)
        ok = truth_valid if truth_valid is not None else np.ones((h, w), bool)
        has_pred = pred != PRED_NODATA
        t = truth.astype(np.int64)
        p = pred.astype(np.int64)
        _blend(err, ok & has_pred & (t == p) & (t > 0), ERROR_COLOURS["correct (foreground)"], 0.7)
        _blend(err, ok & has_pred & (t != p) & (t == 0), ERROR_COLOURS["false positive"], 0.8)
        _blend(err, ok & has_pred & (t != p) & (p == 0), ERROR_COLOURS["false negative"], 0.8)
        _blend(err, ok & has_pred & (t != p) & (t > 0) & (p > 0), ERROR_COLOURS["wrong class"], 0.8)
        _blend(err, ok & ~has_pred, ERROR_COLOURS["no prediction"], 0.8)
        panels.append(("errors vs truth", err))
        legend += list(ERROR_COLOURS.items())
    else:
        legend.append(("no prediction", ERROR_COLOURS["no prediction"]))

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
    rows, cols = _sample_indices(height, h), _sample_indices(width, w)
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


# --------------------------------------------------------------------------------------------------
# The entry point.
# --------------------------------------------------------------------------------------------------


def _default_out_dir(store: str | Path | zarr.Group) -> Path:
    """`<store parent>/<store stem>_eval`."""
    if isinstance(store, zarr.Group):
        root = getattr(store.store, "root", None)
        if root is None:
            raise EvaluationError("out_dir is required when the store is not a local directory")
        store = Path(str(root))
    path = Path(store).resolve()
    return path.parent / f"{path.stem}_eval"


def evaluate(
    store: str | Path | zarr.Group,
    truth: str | Path,
    *,
    ignore: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    scheduler: str = "threads",
    quicklooks: bool = True,
) -> dict[str, Any]:
    """Score every image group of a prediction store against its truth raster; write the reports.

    `truth` is one raster or a directory of rasters matched to the groups by name. `ignore` lists truth
    values to leave out (default 255; the truth's nodata is always left out). Returns the metrics
    (per image and overall, confusion matrices summed), `table` (the Markdown report) and `files`.
    """
    t0 = time.perf_counter()
    if scheduler not in ("threads", "ray", "sync", "synchronous"):
        raise ValueError(f"unknown scheduler {scheduler!r}: use 'threads' or 'ray'")
    ref = _store_ref(store)
    try:
        names = tstore.image_groups(ref)
    except tstore.StoreError as exc:
        raise EvaluationError(str(exc)) from exc
    root = zarr.open_group(ref, mode="r")
    truth = Path(truth)
    if not truth.exists():
        raise EvaluationError(f"truth not found: {truth}")
    if not names:
        raise EvaluationError(f"no image groups in store {store}")
    sources = {n: root[n].attrs.get("source") for n in names}

    if truth.is_dir():
        files = _truth_files(truth)
        if not files:
            raise EvaluationError(f"no truth rasters ({', '.join(sorted(RASTER_SUFFIXES))}) in {truth}")
        matches, unmatched, unused, ambiguous = match_truth(sources, files)
    elif len(names) == 1:
        matches, unmatched, unused, ambiguous = {names[0]: truth}, [], [], {}
    else:
        matches, unmatched, unused, ambiguous = match_truth(sources, [truth])
    if not matches:
        raise EvaluationError(
            f"no truth in {truth} matches an image group of {store} (groups: {', '.join(names[:10])}"
            f"{', ...' if len(names) > 10 else ''}; ambiguous: {ambiguous or 'none'})"
        )

    base_ignore = set(DEFAULT_IGNORE if ignore is None else ignore)
    notes: list[str] = []
    plans: dict[str, dict[str, Any]] = {}
    for name in names:
        attrs = dict(root[name].attrs)
        mask = tstore.open_mask(ref, name)
        handle = (
            MaskHandle(ref, name, tuple(mask.shape), tuple(mask.chunks), mask.dtype) if isinstance(ref, str) else mask
        )
        group_classes = attrs.get("classes") or (list(classes) if classes else None)
        if attrs.get("classes") and classes and list(classes) != list(attrs["classes"]):
            notes.append(f"{name}: store classes {attrs['classes']} used instead of {list(classes)}")
        if attrs.get("complete") is False:
            notes.append(f"{name}: store group is marked incomplete; unwritten pixels count as no prediction")
        crs_wkt, transform = tstore.read_georef(ref, name)
        plan: dict[str, Any] = {
            "mask": mask,
            "handle": handle,
            "classes": group_classes,
            "source": attrs.get("source"),
            "complete": attrs.get("complete"),
            "truth": None,
        }
        if name in matches:
            src, eff_ignore, how, more = plan_truth(matches[name], name, crs_wkt, transform, mask.shape, base_ignore)
            notes += more
            plan.update(truth=src, ignore=eff_ignore, alignment=how, truth_path=str(matches[name]))
        plans[name] = plan

    evaluated = [n for n in names if plans[n]["truth"] is not None]
    nbins = {n: len(plans[n]["classes"]) if plans[n]["classes"] else PRED_NODATA for n in evaluated}
    graphs = [confusion_graph(plans[n]["handle"], plans[n]["truth"], plans[n]["ignore"], nbins[n]) for n in evaluated]
    fulls = dict(zip(evaluated, _compute(graphs, scheduler), strict=True))

    # Class lists: the store's, else the caller's, else class_0.. sized by the values seen.
    seen = 0
    for n in evaluated:
        if not plans[n]["classes"]:
            f = fulls[n][:PRED_NODATA, :PRED_NODATA]
            used = np.flatnonzero(f.sum(axis=0) + f.sum(axis=1))
            seen = max(seen, int(used.max()) + 1 if used.size else 1)
    for n in names:
        if not plans[n]["classes"]:
            plans[n]["classes"] = [f"class_{i}" for i in range(max(seen, 2))]
    all_lists = [plans[n]["classes"] for n in evaluated]
    overall_classes = list(max(all_lists, key=len))
    if any(lst != overall_classes[: len(lst)] for lst in all_lists):
        notes.append("images disagree on class names; overall uses " + ", ".join(overall_classes))
    k_all = len(overall_classes)

    images: dict[str, Any] = {}
    total_cm = np.zeros((k_all, k_all), np.int64)
    side = {"no_prediction": 0, "truth_out_of_range": 0, "pred_out_of_range": 0, "ignored": 0, "pixels": 0}
    no_pred_by_class = np.zeros(k_all, np.int64)
    for n in evaluated:
        plan, cls = plans[n], plans[n]["classes"]
        parts = _split_counts(np.asarray(fulls[n]), nbins[n], len(cls))
        pixels = int(np.prod(plan["mask"].shape))
        m = confusion_metrics(parts["cm"], cls)
        m.update(
            truth=plan["truth_path"],
            alignment=plan["alignment"],
            ignore=sorted(plan["ignore"]),
            classes=list(cls),
            complete=plan["complete"],
            pixels=pixels,
            ignored=pixels - parts["counted"],
            no_prediction=parts["no_prediction"],
            no_prediction_by_class=dict(zip(cls, map(int, parts["no_prediction_by_class"]), strict=True)),
            truth_out_of_range=parts["truth_out_of_range"],
            pred_out_of_range=parts["pred_out_of_range"],
        )
        if parts["truth_out_of_range"] or parts["pred_out_of_range"]:
            notes.append(
                f"{n}: values outside the {len(cls)} classes excluded (truth "
                f"{parts['truth_out_of_range']:,}, prediction {parts['pred_out_of_range']:,})"
            )
        images[n] = m
        k = len(cls)
        total_cm[:k, :k] += parts["cm"]
        no_pred_by_class[:k] += parts["no_prediction_by_class"]
        for key in side:
            side[key] += m[key]
    overall = confusion_metrics(total_cm, overall_classes)
    overall.update(
        side,
        images=len(evaluated),
        no_prediction_by_class=dict(zip(overall_classes, map(int, no_pred_by_class), strict=True)),
    )

    out = Path(out_dir) if out_dir is not None else _default_out_dir(store)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {
        "metrics_json": str(out / "metrics.json"),
        "metrics_md": str(out / "metrics.md"),
        "confusion_matrix_png": str(
            plot_confusion(
                total_cm,
                overall_classes,
                out / "confusion_matrix.png",
                title=f"confusion, {len(evaluated)} image{'s' if len(evaluated) != 1 else ''} (row-normalised)",
            )
        ),
        "quicklooks": {},
    }
    if quicklooks:
        # A decimated read of a whole raster passes every block through GDAL's cache, which otherwise
        # grows to 5 % of the machine's RAM before the dataset closes: keep it small meanwhile.
        with rasterio.Env(GDAL_CACHEMAX=QUICKLOOK_GDAL_CACHE_BYTES):
            for n in names:
                plan = plans[n]
                info = write_quicklook(
                    plan["mask"],
                    plan["truth"],
                    plan.get("ignore", set()),
                    plan["source"],
                    plan["classes"],
                    out / f"{n}_quicklook.png",
                    n,
                    notes,
                )
                files["quicklooks"][n] = info["path"]
                if n in images:
                    images[n]["quicklook"] = info

    result: dict[str, Any] = {
        "store": str(store if not isinstance(store, zarr.Group) else getattr(store.store, "root", store)),
        "truth": str(truth),
        "out_dir": str(out),
        "scheduler": scheduler,
        "classes": overall_classes,
        "images": images,
        "overall": overall,
        "unmatched_groups": unmatched,
        "unmatched_truth": [str(p) for p in unused],
        "ambiguous": ambiguous,
        "warnings": list(dict.fromkeys(notes)),
    }
    result["table"] = markdown_report(result)
    result["files"] = files
    result["seconds"] = round(time.perf_counter() - t0, 3)
    Path(files["metrics_md"]).write_text(result["table"])
    Path(files["metrics_json"]).write_text(
        json.dumps(json_safe({k: v for k, v in result.items() if k != "table"}), indent=2) + "\n"
    )
    for note in result["warnings"]:
        warnings.warn(note, EvaluationWarning, stacklevel=2)
    return result


# --------------------------------------------------------------------------------------------------
# Command line (wired as `tileseg evaluate` by tileseg.cli).
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tileseg evaluate`."""
    parser.add_argument("store", help="a .zarr store written by `tileseg segment`")
    parser.add_argument("--truth", required=True, help="truth raster, or a directory of rasters named like the images")
    parser.add_argument(
        "--ignore",
        type=int,
        nargs="*",
        default=None,
        metavar="V",
        help="truth values to leave out (default 255; the truth nodata is always left out)",
    )
    parser.add_argument(
        "--classes", nargs="+", default=None, metavar="NAME", help="class names when the store has none"
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="report directory (default <store>_eval)")
    parser.add_argument("--scheduler", choices=["threads", "ray"], default="threads", help="Dask scheduler")
    parser.add_argument("--no-quicklooks", dest="quicklooks", action="store_false", help="skip the PNG quicklooks")


def run_from_args(args: argparse.Namespace) -> int:
    """Run `evaluate` from parsed options, print the Markdown table; exit status 2 on unusable input."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EvaluationWarning)  # they are printed in the table below
            result = evaluate(
                args.store,
                args.truth,
                ignore=args.ignore,
                classes=args.classes,
                out_dir=args.out,
                scheduler=args.scheduler,
                quicklooks=args.quicklooks,
            )
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["table"])
    print(f"reports in {result['out_dir']} ({result['seconds']:.1f} s)")
    return 0
