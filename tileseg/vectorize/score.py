"""Object scores of one store group against a truth vector file (the I/O around `tileseg.object_metrics`).

Both sides are restricted to the same area: the AOI polygons when given (labels are complete there), else the
image's valid area (mask != 255). An object counts in the area when its representative point lies inside it,
so an object cut by the area's edge is counted whole or not at all, the same way on both sides.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from tileseg.object_metrics import DEFAULT_IOU, ObjectScores, object_scores
from tileseg.vectorize.shell import DEFAULT_BLOCK, VectorizeError, group_meta, vectorize_group


@dataclass(frozen=True)
class GroupObjectScores:
    """Object scores of one image group, with the counts on each side after restriction to the area."""

    name: str
    scores: ObjectScores
    predicted: int
    truth: int
    area_source: str  # "aoi" or "valid"


def _read_polygons(path: str | os.PathLike[str], crs: str, what: str, label: str):
    """Polygons of a vector file in `crs` (multi-parts exploded, invalid ones repaired)."""
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio's DataSourceError and friends
        raise VectorizeError(f"{label}: cannot read the {what} {path} ({exc})") from None
    if gdf.crs is None:
        raise VectorizeError(f"{label}: the {what} {path} has no CRS")
    geoms = gdf.to_crs(crs).geometry.make_valid().explode(ignore_index=True)
    geoms = geoms[geoms.geom_type == "Polygon"]
    return np.asarray(geoms.values, dtype=object)


def score_group(
    store: str | os.PathLike[str],
    name: str,
    truth: str | os.PathLike[str],
    *,
    aoi: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
    iou_threshold: float = DEFAULT_IOU,
    block: int = DEFAULT_BLOCK,
    use_ray: bool | None = None,
) -> GroupObjectScores:
    """Object precision/recall/F1 of a group's predicted objects against the polygons of a truth file (any CRS)."""
    label = f"{store}/{name}"
    meta = group_meta(store, name)
    if not meta.crs:
        raise VectorizeError(f"{label}: the image has no CRS, so it cannot be compared with a vector truth")
    pred = vectorize_group(store, name, classes=classes, block=block, use_ray=use_ray)
    true = _read_polygons(truth, meta.crs, "truth", label)
    if aoi is not None:
        area = shapely.union_all(_read_polygons(aoi, meta.crs, "AOI", label))
        source = "aoi"
    else:
        area = shapely.union_all(
            vectorize_group(store, name, values="valid", block=block, use_ray=False).geometry.values
        )
        source = "valid"
    shapely.prepare(area)
    p = np.asarray(pred.geometry.values, dtype=object)
    p = p[shapely.contains(area, shapely.point_on_surface(p))] if len(p) else p
    t = true[shapely.contains(area, shapely.point_on_surface(true))] if len(true) else true
    return GroupObjectScores(name, object_scores(p, t, iou_threshold), len(p), len(t), source)
