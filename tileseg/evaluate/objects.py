"""Object-level scoring in `tileseg evaluate`: truth polygons (any CRS) rasterised onto each image's grid for
the pixel metrics, and predicted objects matched one-to-one with true ones at IoU >= a threshold.

A raster truth can be scored by objects too: its connected components (4-connected, as the predicted
objects are) become the true objects.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.windows
from affine import Affine

from tileseg import store as tstore
from tileseg.errors import EvaluationError
from tileseg.labels import grid_box, rasterize_window, read_labels
from tileseg.mask import NODATA
from tileseg.object_metrics import ObjectScores, overall

_WINDOW = 2048  # rasterised and written in windows of this side: memory stays a window deep


def rasterize_truth(
    store: Any, names: Sequence[str], vectors: str | Path, aoi: str | Path | None, field: str | None, out: Path
) -> Path:
    """One truth GeoTIFF per image group in `out` (named after the group), on the group's own grid: the
    polygons' classes, background elsewhere, NODATA outside the AOI."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        info = tstore.read_info(store, name)
        classes = tuple(tstore.open_mask(store, name).attrs.get("classes") or ("background", "object"))
        if not info.crs:
            raise EvaluationError(f"{name}: the image has no CRS, so vector truth cannot be placed on it")
        labels = read_labels(vectors, classes, class_field=field, aoi=aoi)
        transform = Affine(*info.transform[:6])
        profile = dict(
            driver="GTiff", height=info.height, width=info.width, count=1, dtype="uint8", crs=info.crs,
            transform=transform, nodata=NODATA, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
        )  # fmt: skip
        image_box = grid_box(transform, (info.height, info.width))
        with rasterio.open(out / f"{name}.tif", "w", **profile) as dst:
            for row in range(0, info.height, _WINDOW):
                for col in range(0, info.width, _WINDOW):
                    win = rasterio.windows.Window(
                        col, row, min(_WINDOW, info.width - col), min(_WINDOW, info.height - row)
                    )
                    mask, _ = rasterize_window(
                        labels, info.crs, rasterio.windows.transform(win, transform), (win.height, win.width), image_box
                    )
                    dst.write(mask, 1, window=win)
    return out


def truth_polygons_from_raster(path: str | Path, class_id: int = 1) -> Path:
    """A GeoPackage of a truth raster's connected components of `class_id` (in the raster's CRS)."""
    import geopandas as gpd
    import shapely

    with rasterio.open(path) as ds:
        data = ds.read(1)
        geoms = [
            shapely.geometry.shape(g)
            for g, v in rasterio.features.shapes(data, mask=data == class_id, transform=ds.transform, connectivity=4)
            if v == class_id
        ]
        crs = ds.crs
    if crs is None:
        raise EvaluationError(f"{path}: the truth raster has no CRS, so its objects cannot be placed")
    out = Path(tempfile.mkdtemp(prefix="tileseg-truth-")) / "objects.gpkg"
    gpd.GeoDataFrame(geometry=geoms, crs=crs).to_file(out)
    return out


def score_objects(
    store: Any,
    truths: dict[str, Path],
    *,
    aoi: str | Path | None,
    iou_threshold: float,
) -> dict[str, Any]:
    """Object precision/recall/F1 per image group and overall (TP/FP/FN summed), against truth polygon files."""
    from tileseg.vectorize.score import score_group

    per: dict[str, ObjectScores] = {}
    images: dict[str, Any] = {}
    for name, truth in truths.items():
        g = score_group(store, name, truth, aoi=aoi, iou_threshold=iou_threshold)
        per[name] = g.scores
        images[name] = {**g.scores.to_dict(), "predicted": g.predicted, "truth": g.truth, "area": g.area_source}
    total = overall(per.values()) if per else ObjectScores(0, 0, 0)
    return {"iou_threshold": iou_threshold, "images": images, "overall": total.to_dict()}


def markdown_section(objects: dict[str, Any]) -> list[str]:
    """The report's objects table: one row per image, then the overall row."""
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"  # noqa: E731
    lines = [
        "",
        f"## Objects (matched one-to-one at IoU >= {objects['iou_threshold']})",
        "",
        "| image | true objects | predicted | TP | FP | FN | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in objects["images"].items():
        lines.append(
            f"| {name} | {m['truth']} | {m['predicted']} | {m['tp']} | {m['fp']} | {m['fn']} | "
            f"{fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} |"
        )
    o = objects["overall"]
    lines.append(
        f"| **overall** | | | {o['tp']} | {o['fp']} | {o['fn']} | {fmt(o['precision'])} | {fmt(o['recall'])} | "
        f"**{fmt(o['f1'])}** |"
    )
    return lines
