"""Vector labels: polygons (GeoJSON, GeoPackage, GeoParquet, any CRS) rasterised onto an image's own grid
when a training window is drawn.

Inside the area of interest a pixel is its polygon's class, or background (0) where no polygon covers
it; outside the AOI, and on images that no polygon touches when no AOI is given, it is unknown
(`NODATA`, weight 0): missing labels never teach the model that a building is background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from tileseg.errors import DataError
from tileseg.mask import NODATA
from tileseg.uri import is_uri, redact, url_of


def _read_frame(path: str | Path, what: str):
    import geopandas as gpd

    try:
        if str(path).lower().endswith((".parquet", ".geoparquet")):
            return gpd.read_parquet(url_of(str(path)) if is_uri(path) else path)  # URLs through fsspec
        if is_uri(path):  # fetched through fsspec (label files are small), so no GDAL setting is changed
            import fsspec

            with fsspec.open(url_of(str(path)), "rb") as f:
                return gpd.read_file(f)
        return gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio/pyarrow raise many kinds: one line naming the file
        raise DataError(redact(f"{path}: cannot read {what} ({str(exc).splitlines()[0][:200]})")) from None


@dataclass(frozen=True, eq=False)
class VectorLabels:
    """Label polygons with a class index each, in their own CRS, and the AOI polygon (or None)."""

    source: str
    crs: str  # WKT
    geometries: np.ndarray  # shapely geometries
    class_ids: np.ndarray  # int, 1.. (0 is background)
    aoi: shapely.Geometry | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def in_crs(self, crs: str) -> tuple[np.ndarray, shapely.STRtree, shapely.Geometry | None]:
        """(geometries, their STRtree, AOI) reprojected to `crs`, computed once per CRS."""
        if crs not in self._cache:
            src, dst = CRS.from_user_input(self.crs), CRS.from_user_input(crs)
            if src == dst:
                geoms, aoi = self.geometries, self.aoi
            else:
                t = Transformer.from_crs(src, dst, always_xy=True)
                geoms = shapely.transform(self.geometries, lambda xy: np.column_stack(t.transform(*xy.T)))
                aoi = None
                if self.aoi is not None:
                    aoi = shapely.transform(self.aoi, lambda xy: np.column_stack(t.transform(*xy.T)))
            geoms = shapely.make_valid(geoms)
            self._cache[crs] = (geoms, shapely.STRtree(geoms), None if aoi is None else shapely.make_valid(aoi))
        return self._cache[crs]


def read_labels(
    path: str | Path,
    classes: Sequence[str],
    *,
    class_field: str | None = None,
    aoi: str | Path | None = None,
) -> VectorLabels:
    """Read label polygons; each takes the class named by `class_field` (a class name or index) or, without
    one, the first non-background class. Non-polygon features are dropped."""
    frame = _read_frame(path, "labels")
    if frame.crs is None:
        raise DataError(f"{path}: the labels have no CRS")
    frame = frame[frame.geometry.notna() & frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if class_field is None:
        if len(classes) < 2:
            raise DataError(f"{path}: need a background class and at least one other")
        ids = np.ones(len(frame), np.int64)
    else:
        if class_field not in frame.columns:
            raise DataError(f"{path}: no attribute {class_field!r} (has {', '.join(map(str, frame.columns))})")
        ids = np.array([_class_id(v, classes, path) for v in frame[class_field]], np.int64)
    aoi_geom = None
    if aoi is not None:
        area = _read_frame(aoi, "the area of interest")
        if area.crs is None:
            raise DataError(f"{aoi}: the area of interest has no CRS")
        area = area.to_crs(frame.crs)
        aoi_geom = shapely.union_all(shapely.make_valid(area.geometry.values))
    return VectorLabels(
        source=str(path),
        crs=frame.crs.to_wkt(),
        geometries=np.asarray(frame.geometry.values, dtype=object),
        class_ids=ids,
        aoi=aoi_geom,
    )


def _class_id(value: object, classes: Sequence[str], path: str | Path) -> int:
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    try:
        idx = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{path}: class {value!r} is not one of {', '.join(classes)}") from None
    if not 0 <= idx < len(classes):
        raise DataError(f"{path}: class index {idx} is outside 0..{len(classes) - 1}")
    return idx


def grid_box(transform: Affine, shape: tuple[int, int]) -> shapely.Geometry:
    """The footprint (a box in the grid's CRS) of a north-up grid of `shape` (height, width)."""
    h, w = shape
    west, north = transform @ (0, 0)
    east, south = transform @ (w, h)
    return shapely.box(min(west, east), min(south, north), max(west, east), max(south, north))


def rasterize_window(
    labels: VectorLabels,
    crs: str | None,
    transform: Affine,
    shape: tuple[int, int],
    image_box: shapely.Geometry | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(class mask uint8 with NODATA where unknown, labelled bool) of the window whose grid is
    `transform` and `shape` (height, width) in `crs`. Without an AOI, the window is labelled when any
    polygon touches its image (`image_box`, the whole image's footprint; default the window's)."""
    if not crs:
        raise DataError(f"{labels.source}: an image without a CRS cannot take vector labels")
    geoms, tree, aoi = labels.in_crs(crs)
    box = grid_box(transform, shape)
    hits = tree.query(box, predicate="intersects")
    mask = np.zeros(shape, np.uint8)
    if len(hits):
        order = hits[np.argsort(labels.class_ids[hits], kind="stable")]  # higher classes drawn last
        mask = rasterio.features.rasterize(
            zip(geoms[order], labels.class_ids[order], strict=True),
            out_shape=shape,
            transform=transform,
            fill=0,
            dtype="uint8",
        )
    if aoi is not None:
        inside = rasterio.features.geometry_mask([aoi], out_shape=shape, transform=transform, invert=True)
    else:
        touched = bool(len(hits)) or bool(len(tree.query(image_box or box, predicate="intersects")))
        inside = np.full(shape, touched)
    mask[~inside] = NODATA
    return mask, inside


@dataclass(frozen=True)
class LabelSpec:
    """Where a training source's vector labels come from: small and picklable (it travels to every Ray
    worker in the plan); `load` reads the file once per process."""

    path: str
    classes: tuple[str, ...]
    class_field: str | None = None
    aoi: str | None = None

    def load(self) -> VectorLabels:
        if self not in _LOADED:
            _LOADED[self] = read_labels(self.path, self.classes, class_field=self.class_field, aoi=self.aoi)
        return _LOADED[self]


_LOADED: dict[LabelSpec, VectorLabels] = {}


def labelled_part(labels: VectorLabels, crs: str, footprint: shapely.Geometry) -> float:
    """The fraction of an image's `footprint` (in `crs`) that is labelled: inside the AOI, or, without an
    AOI, 1 when any polygon touches it and 0 when none does."""
    geoms, tree, aoi = labels.in_crs(crs)
    if aoi is None:
        return 1.0 if len(tree.query(footprint, predicate="intersects")) else 0.0
    area = footprint.area
    return float(shapely.intersection(footprint, aoi).area / area) if area > 0 else 0.0
