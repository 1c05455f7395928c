"""Kathmandu masks rasterised from its polygons (255 outside the AOI), beside symlinks to its images."""

import glob
import os
import sys

import rasterio

sys.path.insert(0, "/work/main")
from tileseg.labels import rasterize_window, read_labels  # noqa: E402

k = "/work/shared/data/kathmandu"
labels = read_labels(f"{k}/buildings.geojson", ("background", "building"), class_field="class", aoi=f"{k}/aoi.geojson")
n = 0
for path in sorted(glob.glob(f"{k}/images/*.tif")):
    with rasterio.open(path) as ds:
        m, inside = rasterize_window(labels, ds.crs.to_wkt(), ds.transform, ds.shape)
        prof = dict(
            driver="GTiff",
            height=ds.height,
            width=ds.width,
            count=1,
            dtype="uint8",
            crs=ds.crs,
            transform=ds.transform,
            nodata=255,
            compress="deflate",
        )
    if not inside.any():
        continue
    name = os.path.basename(path)
    os.symlink(path, f"/tmp/exp/kathmandu/images/{name}") if not os.path.exists(
        f"/tmp/exp/kathmandu/images/{name}"
    ) else None
    with rasterio.open(f"/tmp/exp/kathmandu/masks/{name}", "w", **prof) as dst:
        dst.write(m, 1)
    n += 1
print(n, "kathmandu pairs")
