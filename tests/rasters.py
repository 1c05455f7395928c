"""Test helpers: build small GeoTIFFs, plan chunk-aligned blocks, and open tileseg stores with GDAL."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from tileseg import store as st
from tileseg.grid import Window

UTM33 = CRS.from_epsg(32633)
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4500000.0)


def write_tif(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    crs: CRS | None = UTM33,
    transform: Affine = TRANSFORM,
    nodata: float | None = None,
    mask: np.ndarray | None = None,
    internal_mask: bool = True,
    **profile: object,
) -> Path:
    """Write (C, H, W) or (H, W) `data` as a GeoTIFF; `mask` (H, W) bool adds a GDAL mask band."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    prof = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        **profile,
    }
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal_mask), rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return Path(path)


def block_plan(height: int, width: int, block: int) -> list[Window]:
    """Row-major, chunk-aligned blocks of `block` pixels covering the image (edge blocks clipped)."""
    return [
        Window(r, c, min(block, height - r), min(block, width - c))
        for r in range(0, height, block)
        for c in range(0, width, block)
    ]


def synthetic_outputs(region: Window, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic mask and probabilities for a region (a function of global pixel position only)."""
    r, c, h, w = region
    rows, cols = np.mgrid[r : r + h, c : c + w]
    logits = np.stack([np.sin(rows * 0.05 * (k + 1) + cols * 0.03 * (k + 2)) for k in range(n_classes)])
    prob = (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float32)
    mask = prob.argmax(axis=0).astype(np.uint8)
    mask[(rows + cols) % 97 == 0] = st.MASK_NODATA
    return mask, prob


def write_synthetic_blocks(
    store: str, name: str, jobs: Sequence[tuple[int, tuple[int, int, int, int]]], n_classes: int = 3
) -> int:
    """Worker for the concurrency tests (top level so a spawned process can import it)."""
    for index, region in jobs:
        win = Window(*region)
        mask, prob = synthetic_outputs(win, n_classes)
        st.write_block(store, name, win, mask, prob, index)
    return len(jobs)


def gdal_can_read_zarr_v3() -> bool:
    """GDAL >= 3.11 knows the Zarr v3 'bytes' and 'zstd' codecs that zarr-python writes."""
    major, minor = (int(v) for v in rasterio.__gdal_version__.split(".")[:2])
    return (major, minor) >= (3, 11)


def gdal_open_path(store: str | os.PathLike[str], name: str, array: str, scratch: Path) -> str:
    """GDAL open string for `name/array`; on GDAL 3.10 via a copy whose v3 'bytes' codec is renamed.

    GDAL 3.10 only knows that codec by its pre-2023 name 'endian' (renamed in GDAL 3.11, OSGeo/gdal#11787);
    the copy changes nothing else, so the georeferencing GDAL reports is what it reads from our metadata.
    """
    if gdal_can_read_zarr_v3():
        return st.gdal_path(store, name, array)
    copy = scratch / f"gdal310-{name}.zarr"
    if not copy.exists():
        copy.mkdir(parents=True)
        shutil.copy(Path(store) / "zarr.json", copy / "zarr.json")
        shutil.copytree(Path(store) / name, copy / name)
        for meta in copy.rglob("zarr.json"):
            doc = json.loads(meta.read_text())
            for codec in doc.get("codecs", []):
                if codec.get("name") == "bytes":
                    codec["name"] = "endian"
            meta.write_text(json.dumps(doc))
    return st.gdal_path(copy, name, array)


def files_under(root: Path) -> Iterator[Path]:
    """Every file below `root` (used to compare chunk objects byte for byte)."""
    return (p for p in sorted(root.rglob("*")) if p.is_file())
