"""The I/O shell: a store group's mask read block by block (Ray tasks or a local loop) -> georeferenced objects.

Blocks are whole multiples of the mask's Zarr chunk, so each task reads whole chunks and nothing twice. Pure
geometry lives in `core` (per-block polygons, exact join) and `clean`; here: reading, the block loop, pixel ->
CRS coordinates, optional reprojection and the attributes of each object.

Area: with a CRS, `area` is in m2 on the WGS84 ellipsoid, computed in a Lambert azimuthal EQUAL-AREA projection
centred on the image (exact areas for any source CRS, Web Mercator and lon/lat included, up to the bending of
pixel-sized edges); without a CRS it is in pixels. `area_unit` says which.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import zarr

from tileseg import store as tstore
from tileseg.errors import TilesegError
from tileseg.grid import Window
from tileseg.vectorize.clean import AreaFn, Cleanup, clean
from tileseg.vectorize.core import BlockPolygons, Piece, block_polygons, block_windows, vectorize_blocks

DEFAULT_BLOCK = 1024  # one default chunk: memory a quarter of a whole-raster polygonisation, same time (bench)
"""Block side in pixels (rounded up to a multiple of the mask's chunk): 16 MiB of mask per task."""
COLUMNS = ("image", "class_id", "class_name", "area", "area_unit", "probability", "geometry")
"""Attribute columns of the output, in order (`probability` only when the group stores probabilities)."""


NO_CLEANUP = Cleanup()
"""The default: the exact polygons, untouched."""


class VectorizeError(TilesegError, ValueError):
    """A store, group, class or option cannot be vectorised; the message names the store/group and the problem."""


@dataclass(frozen=True)
class GroupSource:
    """What a block task needs to read one group: where, which classes, and whether probabilities exist."""

    store: str
    name: str
    classes: tuple[int, ...]
    probability: bool


@dataclass(frozen=True)
class GroupMeta:
    """A group's grid, georeferencing, chunk and class names."""

    name: str
    height: int
    width: int
    chunk: int
    crs: str | None
    transform: tuple[float, ...]
    class_names: tuple[str, ...]
    probability_dtype: str | None


def _store_arg(store: str | os.PathLike[str]) -> str:
    return os.fspath(store)


def group_meta(store: str | os.PathLike[str], name: str) -> GroupMeta:
    """Read a group's metadata; VectorizeError names the store and group when it is not a tileseg image group."""
    try:
        info = tstore.read_info(_store_arg(store), name)
        g = zarr.open_group(_store_arg(store), path=name, mode="r")
        mask = g["mask"]
    except (tstore.StoreError, KeyError, FileNotFoundError) as exc:
        raise VectorizeError(f"{store}/{name}: not a readable tileseg image group ({exc})") from None
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise VectorizeError(f"{store}/{name}: mask is {mask.dtype} {mask.shape}, expected (y, x) uint8")
    return GroupMeta(
        name=name,
        height=int(mask.shape[0]),
        width=int(mask.shape[1]),
        chunk=int(mask.chunks[0]),
        crs=info.crs,
        transform=tuple(info.transform),
        class_names=tuple(str(c) for c in g.attrs.get("classes", mask.attrs.get("classes", []))),
        probability_dtype=g.attrs.get("probability_dtype") if "probability" in g else None,
    )


def resolve_classes(meta: GroupMeta, wanted: Sequence[str] | None, store: str) -> tuple[int, ...]:
    """Class ids from names or ids (default: every class except 0, the background by convention)."""
    if not wanted:
        ids = tuple(range(1, len(meta.class_names)))
        if not ids:
            raise VectorizeError(f"{store}/{meta.name}: only one class ({meta.class_names}); name it with --classes")
        return ids
    out = []
    for w in wanted:
        if w in meta.class_names:
            out.append(meta.class_names.index(w))
        elif str(w).isdigit() and int(w) < len(meta.class_names):
            out.append(int(w))
        else:
            raise VectorizeError(f"{store}/{meta.name}: unknown class {w!r} (classes: {', '.join(meta.class_names)})")
    return tuple(dict.fromkeys(out))


def read_block(src: GroupSource, window: Window, image_shape: tuple[int, int]) -> BlockPolygons:
    """Read one block of the mask (and its class probabilities) and polygonise it (a Ray task or a plain call)."""
    g = zarr.open_group(src.store, path=src.name, mode="r")
    r, c, h, w = window
    values = g["mask"][r : r + h, c : c + w]
    prob = None
    if src.probability:
        arr = g["probability"]
        prob = np.stack([np.asarray(arr[k, r : r + h, c : c + w], dtype=np.float32) for k in src.classes])
        if arr.dtype == np.uint8:
            prob = np.where(prob == tstore.MASK_NODATA, np.nan, prob / 254.0)
    return block_polygons(values, window, image_shape, src.classes, prob)


def iter_blocks(
    src: GroupSource, windows: Sequence[Window], image_shape: tuple[int, int], use_ray: bool
) -> Iterator[BlockPolygons]:
    """Block results in any order: Ray tasks (a bounded number in flight) or a local loop."""
    if not use_ray:
        for win in windows:
            yield read_block(src, win, image_shape)
        return
    import ray

    task = ray.remote(num_cpus=1)(read_block)
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: list = []
    todo = list(windows)
    while todo or pending:
        while todo and len(pending) < limit:
            pending.append(task.remote(src, todo.pop(0), image_shape))
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def pixel_to_crs(geoms: np.ndarray, transform: Sequence[float]) -> np.ndarray:
    """Pixel-coordinate geometries mapped through the affine (a, b, c, d, e, f) to the image's CRS."""
    a, b, c, d, e, f = transform
    m = np.array([[a, d], [b, e]])
    return shapely.transform(np.asarray(geoms, dtype=object), lambda xy: xy @ m + (c, f))


def area_function(meta: GroupMeta) -> tuple[AreaFn, str]:
    """(areas of pixel-coordinate polygons, unit): m2 through an equal-area projection when there is a CRS."""
    if not meta.crs:
        return (lambda geoms: shapely.area(np.asarray(geoms, dtype=object))), "px"
    from pyproj import CRS, Transformer

    src = CRS.from_user_input(meta.crs)
    centre = pixel_to_crs(np.array([shapely.Point(meta.width / 2, meta.height / 2)]), meta.transform)[0]
    lon, lat = Transformer.from_crs(src, "EPSG:4326", always_xy=True).transform(centre.x, centre.y)
    laea = CRS.from_proj4(f"+proj=laea +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs")
    to_laea = Transformer.from_crs(src, laea, always_xy=True)

    def area(geoms: np.ndarray) -> np.ndarray:
        in_crs = pixel_to_crs(geoms, meta.transform)
        return shapely.area(
            shapely.transform(in_crs, lambda xy: np.column_stack(to_laea.transform(xy[:, 0], xy[:, 1])))
        )

    return area, "m2"


def vectorize_group(
    store: str | os.PathLike[str],
    name: str,
    *,
    classes: Sequence[str] | None = None,
    cleanup: Cleanup = NO_CLEANUP,
    block: int = DEFAULT_BLOCK,
    use_ray: bool | None = None,
    values: str = "mask",
):
    """Objects of one image group as a GeoDataFrame in the group's CRS (columns: COLUMNS).

    `use_ray` None: Ray tasks when Ray is initialised in this process, a local loop otherwise. Area thresholds
    of `cleanup` are in the unit of `area` (m2 with a CRS, px without). `values="valid"` vectorises the valid
    area (mask != 255) as class 1 instead of the classes.
    """
    import geopandas as gpd

    meta = group_meta(store, name)
    if values == "valid":
        ids, names = (1,), {1: "valid"}
    else:
        ids = resolve_classes(meta, classes, os.fspath(store))
        names = {i: meta.class_names[i] for i in ids}
    if use_ray is None:
        import ray

        use_ray = ray.is_initialized()
    side = max(meta.chunk, -(-block // meta.chunk) * meta.chunk)  # whole chunks per block
    windows = block_windows(meta.height, meta.width, side)
    src = GroupSource(_store_arg(store), name, ids, meta.probability_dtype is not None and values == "mask")
    if values == "valid":
        pieces = _valid_pieces(src, windows, (meta.height, meta.width))
    else:
        pieces = vectorize_blocks(iter_blocks(src, windows, (meta.height, meta.width), use_ray))
    area, unit = area_function(meta)
    px = np.array([p.geometry for p in pieces], dtype=object)
    try:
        geoms, index = clean(px, cleanup, {"px": shapely.area, unit: area}, unit)
    except ValueError as exc:
        raise VectorizeError(f"{store}/{name}: {exc}") from None
    kept = [pieces[i] for i in index]
    data = {
        "image": [name] * len(kept),
        "class_id": np.array([p.class_id for p in kept], dtype=np.int32),
        "class_name": [names[p.class_id] for p in kept],
        "area": area(geoms) if len(geoms) else np.zeros(0),
        "area_unit": [unit] * len(kept),
    }
    if src.probability:
        data["probability"] = np.array([p.prob_sum / p.pixels for p in kept], dtype=np.float64)
    crs = meta.crs or None
    return gpd.GeoDataFrame(data, geometry=pixel_to_crs(geoms, meta.transform), crs=crs)


def _valid_pieces(src: GroupSource, windows: Sequence[Window], shape: tuple[int, int]) -> list[Piece]:
    """Objects of the valid area (mask != 255), block by block with the same exact join."""

    def one(win: Window) -> BlockPolygons:
        g = zarr.open_group(src.store, path=src.name, mode="r")
        r, c, h, w = win
        valid = (g["mask"][r : r + h, c : c + w] != tstore.MASK_NODATA).astype(np.uint8)
        return block_polygons(valid, win, shape, (1,))

    return vectorize_blocks(one(w) for w in windows)


def vectorize_store(
    store: str | os.PathLike[str],
    *,
    groups: Sequence[str] | None = None,
    to_crs: str | None = None,
    **kwargs,
):
    """Objects of every image group (or `groups`) of a store in one GeoDataFrame; `to_crs` reprojects.

    Groups with different CRSs need `to_crs` (one file has one CRS); a group without a CRS cannot be reprojected.
    """
    import geopandas as gpd
    import pandas as pd

    try:
        names = list(groups) if groups else tstore.image_groups(_store_arg(store))
    except tstore.StoreError as exc:
        raise VectorizeError(str(exc)) from None
    if not names:
        raise VectorizeError(f"{store}: no image groups")
    frames = []
    for name in names:
        gdf = vectorize_group(store, name, **kwargs)
        if to_crs:
            if gdf.crs is None:
                raise VectorizeError(f"{store}/{name}: the image has no CRS, cannot reproject to {to_crs}")
            try:
                gdf = gdf.to_crs(to_crs)
            except Exception as exc:  # pyproj's CRSError, or a transformation that fails
                raise VectorizeError(f"{store}/{name}: cannot reproject to {to_crs!r} ({exc})") from None
        frames.append(gdf)
    crss = {f.crs.to_wkt() if f.crs is not None else None for f in frames}
    if len(crss) > 1:
        raise VectorizeError(f"{store}: the groups have different CRSs; pass --to-crs (e.g. EPSG:4326)")
    out = pd.concat(frames, ignore_index=True)
    return gpd.GeoDataFrame(out, geometry="geometry", crs=frames[0].crs)
