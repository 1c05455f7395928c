"""Block-wise vectorize vs the whole-raster reference on a 20000x20000 mask, side by side, in one run.

The mask is the Kampala scene's mask (3072x2048, EPSG:3857) tiled to SIZE x SIZE in a temp store (chunk 1024).
Each arm runs in a fresh subprocess that reports its own wall time and peak RSS (getrusage ru_maxrss):

  reference  read the whole mask, rasterio.features.shapes(mask, mask=mask==1, transform) on it, build a
             GeoDataFrame (shapely geometries + class column, CRS)
  blockwise  tileseg.vectorize.vectorize_group: chunk-aligned blocks (local loop, or --ray), exact join,
             CRS coordinates, class/area attributes -> GeoDataFrame

    .venv/bin/python bench/vectorize.py [--size 20000] [--block 4096] [--ray] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TILESEG_DATA", REPO.parent / "shared" / "data"))
MASK = DATA / "kampala" / "scene" / "kampala_z21_mask.tif"


def make_store(path: Path, size: int, chunk: int = 1024) -> None:
    """A SIZE x SIZE store whose mask is the Kampala mask tiled (written one chunk row at a time)."""
    import rasterio

    from tileseg import store as st
    from tileseg.raster import ImageInfo

    with rasterio.open(MASK) as ds:
        tile, crs, t = ds.read(1), ds.crs.to_wkt(), ds.transform
    info = ImageInfo("tiled.tif", size, size, 1, "uint8", crs, tuple(t)[:6], 255.0, "GTiff")
    rows = -(-size // chunk)
    st.create_image_group(path, "tiled", info, classes=["background", "building"], chunk=chunk, num_blocks=rows)
    th, tw = tile.shape
    for i, r in enumerate(range(0, size, chunk)):
        h = min(chunk, size - r)
        ys = np.arange(r, r + h) % th
        strip = np.tile(tile[ys], (1, -(-size // tw)))[:, :size]
        st.write_block(path, "tiled", (r, 0, h, size), strip, None, i)


def arm_reference(store: str) -> dict:
    """The whole-raster reference: one read, one rasterio.features.shapes, one GeoDataFrame."""
    import geopandas as gpd
    import shapely
    from affine import Affine
    from rasterio import features

    from tileseg import store as st

    crs, t = st.read_georef(store, "tiled")
    mask = st.open_mask(store, "tiled")[:]
    shapes = features.shapes(mask, mask=mask == 1, connectivity=4, transform=Affine(*t))
    geoms, cls = [], []
    for g, v in shapes:
        geoms.append(shapely.geometry.shape(g))
        cls.append(int(v))
    gdf = gpd.GeoDataFrame({"class_id": cls}, geometry=geoms, crs=crs)
    return {"objects": len(gdf), "area": float(gdf.geometry.area.sum())}


def arm_blockwise(store: str, block: int, ray: bool) -> dict:
    """tileseg's block-wise vectorize (exact join), local loop or Ray tasks."""
    from tileseg.vectorize import vectorize_group

    if ray:
        from tileseg.ray_session import RaySession

        with RaySession():
            gdf = vectorize_group(store, "tiled", block=block, use_ray=True)
    else:
        gdf = vectorize_group(store, "tiled", block=block, use_ray=False)
    return {"objects": len(gdf), "area": float(gdf.geometry.area.sum())}


def child(arm: str, store: str, block: int, ray: bool) -> None:
    """Run one arm in this (fresh) process and print its result, time and peak RSS as JSON."""
    start = time.perf_counter()
    out = arm_reference(store) if arm == "reference" else arm_blockwise(store, block, ray)
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_arm(arm: str, store: Path, block: int, ray: bool) -> dict:
    """One arm in a subprocess (its peak RSS is its own); baseline RSS of an idle interpreter is reported too."""
    cmd = [sys.executable, __file__, "--child", arm, "--store", str(store), "--block", str(block)]
    res = subprocess.run(cmd + (["--ray"] if ray else []), capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--ray", action="store_true", help="blocks as Ray tasks (peak RSS then misses the workers)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", choices=["reference", "blockwise"], help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.store, args.block, args.ray)
        return
    with tempfile.TemporaryDirectory(prefix="bench-vectorize-") as tmp:
        store = Path(tmp) / "tiled.zarr"
        t0 = time.perf_counter()
        make_store(store, args.size)
        print(f"store {args.size}x{args.size} written in {time.perf_counter() - t0:.1f} s")
        ref = run_arm("reference", store, args.block, False)
        blk = run_arm("blockwise", store, args.block, args.ray)
    same = ref["objects"] == blk["objects"] and abs(ref["area"] - blk["area"]) <= 1e-6 * ref["area"]
    result = {
        "size": args.size,
        "block": args.block,
        "ray": args.ray,
        "reference": ref,
        "blockwise": blk,
        "same_objects_and_area": same,
        "peak_ratio": blk["peak_rss_mib"] / ref["peak_rss_mib"],
        "time_ratio": blk["seconds"] / ref["seconds"],
    }
    print(f"{'arm':<10} {'objects':>8} {'seconds':>8} {'peak RSS MiB':>13}")
    for name, r in (("reference", ref), ("blockwise", blk)):
        print(f"{name:<10} {r['objects']:>8} {r['seconds']:>8.1f} {r['peak_rss_mib']:>13.0f}")
    print(f"blockwise / reference: peak {result['peak_ratio']:.2f}, time {result['time_ratio']:.2f}; same: {same}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
