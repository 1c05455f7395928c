"""Ground truth: which truth file belongs to which image group, and how to read it on the prediction grid.

Truth on the prediction's own grid is read window by window; truth on another grid or CRS is read
through a nearest-neighbour `WarpedVRT` onto the prediction grid. Grids that cannot be aligned are
refused with an EvaluationError naming both sides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from tileseg.errors import EvaluationError
from tileseg.mask import NODATA
from tileseg.raster import RASTER_EXTENSIONS

_TRUTH_SUFFIX = re.compile(
    r"_(mask|masks|label|labels|truth|gt|ground_truth|groundtruth|annotation|annotations|reference|ref)$"
)
_IMAGE_SUFFIX = re.compile(r"_(image|images|img|rgb|ortho|orthophoto|scene)$")


# --------------------------------------------------------------------------------------------------
# Matching truth files to image groups.
# --------------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    """Case-fold and collapse every run of non-alphanumerics to `_` (what a "safe" stem may have done)."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def truth_files(truth: Path) -> list[Path]:
    """Raster files directly inside a truth directory (sidecars such as .aux.xml/.ovr are skipped)."""
    return sorted(
        p
        for p in truth.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in RASTER_EXTENSIONS
    )


def _group_keys(name: str, source: str | None, tier: int) -> set[str]:
    """The names an image group answers to at a matching tier."""
    stems = {name} | ({Path(source).stem} if source else set())
    if tier == 0:
        return {s.lower() for s in stems}
    keys = {_norm(s) for s in stems}
    return keys if tier < 3 else {_IMAGE_SUFFIX.sub("", k) for k in keys}


def _file_key(path: Path, tier: int) -> str:
    """The name a truth file answers to at a matching tier."""
    if tier == 0:
        return path.stem.lower()
    return _norm(path.stem) if tier == 1 else _TRUTH_SUFFIX.sub("", _norm(path.stem))


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
    matches: dict[str, Path] = {}
    ambiguous: dict[str, list[str]] = {}
    free_groups = dict(groups)
    free_files = list(files)
    for tier in range(4):
        cands: dict[str, list[Path]] = {}
        for name, source in free_groups.items():
            keys = _group_keys(name, source, tier)
            cands[name] = [f for f in free_files if _file_key(f, tier) in keys]
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
                    others = ", ".join(n for n in takers[found[0]] if n != name)
                    ambiguous[name] = [f"{found[0].name} (also claimed by {others})"]
                    del free_groups[name]
                    continue
                matches[name] = found[0]
                del free_groups[name]
                free_files.remove(found[0])
    return matches, sorted(free_groups), free_files, ambiguous


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
        """Nearest sample of the whole truth at `shape`, on the pixel centres of `pictures.sample_indices`."""
        h, w = shape
        if not self.warp:
            with self.open() as ds:
                return ds.read(self.band, out_shape=(h, w), resampling=Resampling.nearest)
        coarse = Affine(*self.transform) @ Affine.scale(self.width / w, self.height / h)
        with self.open(transform=coarse, shape=(h, w)) as ds:
            return ds.read(self.band)


@dataclass(frozen=True)
class _TruthMeta:
    """What alignment needs to know about a truth raster (read once, file closed)."""

    crs: CRS | None
    transform: Affine
    shape: tuple[int, int]
    nodata: float | None
    count: int
    bounds: tuple[float, float, float, float]  # left, bottom, right, top

    @property
    def finite_nodata(self) -> bool:
        return self.nodata is not None and math.isfinite(self.nodata)


def _read_meta(truth_path: Path) -> _TruthMeta:
    try:
        src_ctx = rasterio.open(truth_path)
    except rasterio.errors.RasterioIOError as exc:
        raise EvaluationError(f"cannot open truth raster {truth_path}: {exc}") from exc
    with src_ctx as src:
        return _TruthMeta(src.crs, src.transform, (src.height, src.width), src.nodata, src.count, tuple(src.bounds))


def _grid_corners(transform: Affine, height: int, width: int) -> np.ndarray:
    """World coordinates of the four corners of a grid, shape (4, 2)."""
    return np.array([transform @ (c, r) for r, c in ((0, 0), (0, width), (height, 0), (height, width))])


def _same_transform(t1: Affine, t2: Affine) -> bool:
    """Whether two affine transforms agree to a thousandth of a pixel."""
    scale = max(abs(t1.a), abs(t1.b), abs(t1.d), abs(t1.e)) or 1.0
    return bool(np.allclose(np.array(t1)[:6] / scale, np.array(t2)[:6] / scale, rtol=0, atol=1e-3))


def _without_crs(
    name: str, where: str, p_crs: CRS | None, p_transform: Affine, shape: tuple[int, int], meta: _TruthMeta
) -> list[str]:
    """Pixel-for-pixel comparison when a side has no CRS: refuse other shapes, return the notes."""
    t_crs = meta.crs
    if meta.shape != shape:
        who = (
            "neither has a CRS"
            if p_crs is None and t_crs is None
            else ("the truth has no CRS" if t_crs is None else "the prediction has no CRS")
        )
        raise EvaluationError(f"cannot align {where}: {who} and the shapes differ")
    if p_crs is None and t_crs is None and not _same_transform(p_transform, meta.transform):
        return [f"{name}: no CRS on either side and transforms differ; compared pixel for pixel"]
    if (p_crs is None) != (t_crs is None):
        side = "truth" if t_crs is None else "prediction"
        return [f"{name}: {side} has no CRS; same shape, compared pixel for pixel"]
    return []


def _check_overlap(where: str, p_crs: CRS, p_transform: Affine, shape: tuple[int, int], meta: _TruthMeta) -> None:
    """Refuse grids that do not intersect (or whose bounds cannot be carried into the truth CRS)."""
    from rasterio.warp import transform_bounds

    corners = _grid_corners(p_transform, *shape)
    p_bounds = (corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max())
    try:
        b = transform_bounds(p_crs, meta.crs, *p_bounds, densify_pts=21)
    except Exception as exc:  # noqa: BLE001 - GDAL's CPLE_* types are private to rasterio (rasterio._err)
        raise EvaluationError(
            f"cannot align {where}: prediction bounds do not transform to the truth CRS ({exc})"
        ) from exc
    left, bottom, right, top = meta.bounds
    if not all(map(math.isfinite, b)) or b[0] >= right or b[2] <= left or b[1] >= top or b[3] <= bottom:
        raise EvaluationError(
            f"cannot align {where}: the grids do not intersect (prediction bounds in the "
            f"truth CRS {tuple(round(v, 6) for v in b)}, truth bounds {meta.bounds})"
        )


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
    meta = _read_meta(truth_path)
    notes = [f"{truth_path.name}: {meta.count} bands, band 1 used as truth"] if meta.count > 1 else []
    ignore = set(ignore)
    if meta.finite_nodata:
        ignore.add(int(meta.nodata) if float(meta.nodata).is_integer() else meta.nodata)
    p_crs = CRS.from_user_input(pred_crs_wkt) if pred_crs_wkt else None
    p_transform = Affine(*pred_transform[:6])
    height, width = pred_shape
    t_h, t_w = meta.shape
    where = f"prediction '{name}' ({width}x{height}) vs truth {truth_path} ({t_w}x{t_h})"
    direct = TruthSource(str(truth_path), 1, False, None, tuple(p_transform)[:6], height, width, 0)

    if p_crs is None or meta.crs is None:
        notes += _without_crs(name, where, p_crs, p_transform, pred_shape, meta)
        return direct, ignore, "pixel-aligned (no CRS, same shape)", notes
    if p_crs == meta.crs and meta.shape == pred_shape and _same_transform(p_transform, meta.transform):
        return direct, ignore, "same grid", notes

    _check_overlap(where, p_crs, p_transform, pred_shape, meta)
    if meta.finite_nodata:
        fill: float = meta.nodata
    else:
        fill = NODATA if (NODATA in ignore or not ignore) else min(ignore)
        ignore.add(fill)
    src = TruthSource(str(truth_path), 1, True, p_crs.to_wkt(), tuple(p_transform)[:6], height, width, fill)
    how = "same CRS, other grid" if p_crs == meta.crs else f"reprojected from {meta.crs.to_string()}"
    return src, ignore, how + " (nearest, WarpedVRT)", notes
