"""`tileseg vectorize`: its options as one frozen dataclass, from which the argparse options are generated."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tileseg.errors import OptionError
from tileseg.options import Command, option
from tileseg.vectorize.clean import Cleanup
from tileseg.vectorize.shell import DEFAULT_BLOCK, VectorizeError, vectorize_store
from tileseg.vectorize.write import format_for, write_vectors

DESCRIPTION = """Polygons of a store's masks (one object per 4-connected region of a class), identical for any
block size, with optional clean-up, written to GeoParquet (.parquet), GeoPackage (.gpkg), FlatGeobuf (.fgb)
or GeoJSON (.geojson). Areas are m2 (equal-area) for georeferenced images, px otherwise."""

_AREA = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px|m2)?\s*$")


def parse_area(text: str | None) -> tuple[float, str | None]:
    """'20px', '5m2' or '5' (the image's own unit) -> (value, unit or None); ValueError when malformed."""
    if text is None:
        return 0.0, None
    m = _AREA.match(str(text))
    if not m:
        raise ValueError(f"bad area {text!r}: a number with an optional unit px or m2 (e.g. 20px, 5m2)")
    return float(m.group(1)), m.group(2)


@dataclass(frozen=True)
class VectorizeOptions:
    """Everything `tileseg vectorize` takes; the CLI is generated from these fields (issue 11's style)."""

    store: str = option(help="a .zarr store written by `tileseg segment`", positional=True)
    out: str = option(help="output file: .parquet (GeoParquet 1.1), .gpkg, .fgb or .geojson")
    classes: tuple[str, ...] | None = option(None, help="class names or ids (default: every class but 0)")
    groups: tuple[str, ...] | None = option(None, help="image groups to vectorise (default: all)")
    simplify: float = option(0.0, help="Douglas-Peucker tolerance in pixels, topology-preserving (0: off)")
    min_area: str | None = option(None, help="drop objects smaller than this: 20px, 5m2, or a number in area units")
    fill_holes: str | None = option(None, help="fill holes smaller than this (same units as --min-area)")
    regularize: bool = option(False, help="orthogonalise near-right angles (buildings); simplifies by >= 2 px first")
    to_crs: str | None = option(None, help="reproject the output, e.g. EPSG:4326")
    block: int = option(DEFAULT_BLOCK, help="block side in pixels, rounded up to whole mask chunks")
    ray: bool = option(False, help="run blocks as Ray tasks (the cluster in RAY_ADDRESS, else an embedded Ray)")

    def cleanup(self) -> Cleanup:
        """The clean-up these options ask for (ValueError on a malformed area)."""
        min_area, min_unit = parse_area(self.min_area)
        holes, holes_unit = parse_area(self.fill_holes)
        return Cleanup(self.simplify, min_area, min_unit, holes, holes_unit, self.regularize)


def run(opts: VectorizeOptions) -> int:
    """Vectorise and write; one clear line on stderr and exit status 2 for bad input."""
    try:
        format_for(opts.out)
        cleanup = opts.cleanup()
        if opts.block < 1 or opts.simplify < 0:
            raise ValueError(f"--block must be >= 1 and --simplify >= 0 (got {opts.block}, {opts.simplify})")
        kwargs = dict(groups=opts.groups, to_crs=opts.to_crs, classes=opts.classes, cleanup=cleanup, block=opts.block)
        if opts.ray:
            from tileseg.ray_session import RaySession

            with RaySession():
                gdf = vectorize_store(opts.store, use_ray=True, **kwargs)
        else:
            gdf = vectorize_store(opts.store, use_ray=False, **kwargs)
    except VectorizeError:
        raise
    except ValueError as exc:  # a malformed area or option
        raise OptionError(str(exc)) from None
    path = write_vectors(gdf, opts.out)
    units = ", ".join(sorted(set(gdf["area_unit"]))) or "-"
    print(f"{path}: {len(gdf)} objects from {gdf['image'].nunique()} image(s), area in {units}")
    return 0


COMMAND = Command(
    "vectorize",
    "polygons of a store's masks (GeoParquet, GeoPackage, FlatGeobuf, GeoJSON)",
    VectorizeOptions,
    run,
    DESCRIPTION,
)
