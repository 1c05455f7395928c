"""Writers: GeoParquet 1.1 (primary), GeoPackage, FlatGeobuf and GeoJSON, chosen by the output's extension."""

from __future__ import annotations

import os
from pathlib import Path

FORMATS = {
    ".parquet": "GeoParquet",
    ".geoparquet": "GeoParquet",
    ".gpkg": "GPKG",
    ".fgb": "FlatGeobuf",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
}
"""Output extension -> format (GeoParquet through geopandas/pyarrow, the others through pyogrio/GDAL)."""


def format_for(path: str | os.PathLike[str]) -> str:
    """The format an output path asks for; ValueError names the path when the extension is unknown."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unknown output format {ext!r} (use {', '.join(sorted(FORMATS))})")
    return FORMATS[ext]


def write_vectors(gdf, path: str | os.PathLike[str], layer: str = "objects") -> Path:
    """Write a GeoDataFrame to `path` atomically (a temp file renamed into place); returns the path.

    GeoParquet: version 1.1 metadata, WKB geometry, a `bbox` covering column for spatial filtering.
    GeoPackage/FlatGeobuf/GeoJSON: one layer `layer` (GeoJSON keeps the data's CRS; use EPSG:4326 for RFC 7946).
    """
    fmt = format_for(path)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial{out.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        if fmt == "GeoParquet":
            gdf.to_parquet(tmp, index=False, schema_version="1.1.0", geometry_encoding="WKB", write_covering_bbox=True)
        else:
            import pyogrio

            pyogrio.write_dataframe(gdf, tmp, driver=fmt, layer=layer if fmt != "GeoJSON" else None)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
