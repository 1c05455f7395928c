"""The segment job's options: one frozen dataclass (the CLI is generated from it) and their one check.

`resolve` checks every option against the model before anything happens (no store is touched, no Ray
started) and fixes the values the run needs: the model, the bands and the tiling, each decided once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tileseg import contract
from tileseg.artifact import ModelMeta, model_digest, read_metadata, refuse_code_layers, resolve_model
from tileseg.blend import BLENDS
from tileseg.errors import StoreExistsError
from tileseg.grid import DEFAULT_BLOCK, DEFAULT_CHUNK, Block
from tileseg.options import check, int_list, option
from tileseg.raster import ImageInfo
from tileseg.stitch import TilingSpec
from tileseg.store import PROBABILITY_DTYPES
from tileseg.uri import absolute, is_uri

DESCRIPTION = """\
Segment images (files, directories, globs) with a tileseg model into one Zarr store.

Each image is cut into overlapping tiles on one global grid, the model runs on the tiles in a pool
of Ray actors, and the predictions are blended back so no seam shows. The store holds one group per
image with `mask` (y, x; 255 = nodata) and, with --probabilities, `probability` (class, y, x),
georeferenced for xarray/rioxarray/GDAL. Without RAY_ADDRESS an embedded Ray starts on this machine.
"""

DEFAULT_DEPTH = 4  # a model that does not say its depth must take tiles divisible by 2**4


@dataclass(frozen=True)
class SegmentOptions:
    """Everything `tileseg segment` (and `segment()`) takes; lists given in Python become tuples."""

    inputs: tuple[str, ...] = option(help="image files, directories or globs", positional=True, metavar="INPUT")
    out: str = option(help="the Zarr store to write", metavar="STORE.zarr")
    model: str | None = option(None, help="a .keras artifact from `tileseg train` (default: the shipped model)")
    tile: int | None = option(None, help="tile size in pixels (default: the model's)")
    overlap: int | None = option(None, help="overlap between neighbouring tiles (default: tile/4)")
    blend: str = option("gaussian", help="blending window", choices=BLENDS)
    batch_size: int = option(16, help="tiles per model call")
    bands: tuple[int, ...] | None = option(
        None, help="1-based input bands, e.g. 3,2,1 (default: the model's bands)", parse=int_list
    )
    probabilities: bool = option(False, help="also store per-class probabilities")
    probability_dtype: str = option(
        "float32",
        help="storage of probabilities: float32 (exact, default), float16 or uint8 (p*254; smaller)",
        choices=PROBABILITY_DTYPES,
    )
    actors: int | None = option(None, help="model actors (default: from the GPUs/CPUs present)")
    gpus_per_actor: float | None = option(None, help="GPUs per actor, fractional allowed (default 1 if GPUs)")
    block: int | None = option(
        DEFAULT_BLOCK, help="block side in pixels, a multiple of --chunk; a worker holds one block at a time"
    )
    chunk: int = option(DEFAULT_CHUNK, help="Zarr chunk side")
    resume: bool = option(False, help="continue a store: only blocks not yet written")
    overwrite: bool = option(False, help="replace an existing store")
    fail_fast: bool = option(False, help="stop at the first failing image")
    vectorize: str | None = option(
        None,
        metavar="FILE",
        help="also write the polygons of every class but the first of the finished images to FILE "
        "(.parquet GeoParquet, .gpkg, .fgb, .geojson), as `tileseg vectorize` does",
    )
    stall_timeout: float = option(900.0, help="fail if no block finishes for this many seconds")
    address: str | None = option(None, help="Ray address (default: RAY_ADDRESS, else embedded)")
    num_cpus: int | None = option(None, help="CPUs for an embedded Ray (default: all)")
    progress: bool = option(True, flag="--quiet", help="no progress bar (Python: progress=False)")

    def __post_init__(self) -> None:
        # Python callers may pass a list, a single path or Path objects; the value is always plain text.
        inputs = (self.inputs,) if isinstance(self.inputs, str | Path) else self.inputs
        object.__setattr__(self, "inputs", tuple(str(p) for p in inputs))
        object.__setattr__(self, "out", str(self.out))
        if self.model is not None:
            object.__setattr__(self, "model", str(self.model))
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(self.bands))


@dataclass(frozen=True)
class Resolved:
    """The options made definite: the model and its metadata, the store's absolute path, bands and tiling."""

    options: SegmentOptions
    model_path: Path
    meta: ModelMeta
    out: str
    bands: tuple[int, ...]
    tiling: TilingSpec
    model_sha256: str  # the model's identity, whatever its path

    def settings(self) -> dict:
        """The run's settings as the store and summary.json record them (and `--resume` compares)."""
        o = self.options
        return dict(
            tile=self.tiling.tile,
            overlap=self.tiling.overlap,
            blend=self.tiling.blend,
            batch_size=self.tiling.batch_size,
            bands=list(self.bands),
            probabilities=o.probabilities,
            probability_dtype=o.probability_dtype,
            block=o.block,
            chunk=o.chunk,
        )

    def image_plan(self, info: ImageInfo, blocks: Sequence[Block]) -> dict:
        """Everything that decides an image's output, recorded in its group: `--resume` refuses any change."""
        source: dict = {"path": info.path, "height": info.height, "width": info.width, "dtype": info.dtype}
        if not is_uri(info.path):
            st = os.stat(info.path)
            source.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        return {
            **self.settings(),
            "blocks": hashlib.sha256(repr([(b.region, b.read) for b in blocks]).encode()).hexdigest()[:16],
            "model": {"sha256": self.model_sha256},
            "source": source,
        }

    def model_identity(self) -> dict:
        """Which model made the store: its path, architecture, classes and training record."""
        m = self.meta
        return {
            "path": str(self.model_path),
            "sha256": self.model_sha256,
            "arch": m.arch,
            "classes": list(m.classes),
            "training": dict(m.training),
        }


def resolve(o: SegmentOptions) -> Resolved:
    """Check every option (OptionError naming it) and fix the model, bands and tiling; no side effects."""
    check(len(o.inputs) > 0, "INPUT", "give at least one image, directory or glob")
    check(o.actors is None or o.actors >= 1, "--actors", f"must be >= 1, got {o.actors}")
    check(o.chunk >= 1, "--chunk", f"must be >= 1, got {o.chunk}")
    check(
        o.block is None or (o.block > 0 and o.block % o.chunk == 0),
        "--block",
        f"must be a positive multiple of --chunk ({o.chunk}), got {o.block}",
    )
    check(o.batch_size >= 1, "--batch-size", f"must be >= 1, got {o.batch_size}")
    check(o.num_cpus is None or o.num_cpus >= 1, "--num-cpus", f"must be >= 1, got {o.num_cpus}")
    gpus = o.gpus_per_actor
    check(gpus is None or gpus >= 0, "--gpus-per-actor", f"must be >= 0, got {gpus}")
    if o.vectorize is not None:
        from tileseg.vectorize.write import format_for

        try:
            format_for(o.vectorize)
        except ValueError as exc:
            check(False, "--vectorize", str(exc))
    check(o.stall_timeout > 0, "--stall-timeout", f"must be > 0 seconds, got {o.stall_timeout}")
    check(o.blend in BLENDS, "--blend", f"must be one of {', '.join(BLENDS)}, got {o.blend!r}")
    check(
        o.probability_dtype in PROBABILITY_DTYPES,
        "--probability-dtype",
        f"must be one of {', '.join(PROBABILITY_DTYPES)}, got {o.probability_dtype!r}",
    )
    model_path = resolve_model(o.model)
    meta = read_metadata(model_path)
    refuse_code_layers(model_path)  # the model is checked before anything is touched
    tile = meta.tile if o.tile is None else o.tile
    step = 2 ** (meta.depth or DEFAULT_DEPTH)
    check(tile > 0 and tile % step == 0, "--tile", f"must be a positive multiple of {step} for this model, got {tile}")
    overlap = tile // 4 if o.overlap is None else o.overlap
    check(0 <= overlap < tile, "--overlap", f"must be in [0, {tile}) for tile {tile}, got {overlap}")
    bands = o.bands or meta.bands
    check(
        len(bands) == meta.num_bands,
        "--bands",
        f"the model takes {meta.num_bands} bands, --bands gives {len(bands)}",
    )
    check(all(b >= 1 for b in bands), "--bands", f"bands are 1-based, got {','.join(map(str, bands))}")
    out = absolute(o.out)
    if contract.exists(out) and not (o.resume or o.overwrite):
        raise StoreExistsError(f"{out} exists: pass --resume to continue it or --overwrite to replace it")
    if o.resume:
        contract.check_resume(out)
    elif o.overwrite:
        contract.check_overwrite(out, [absolute(i) for i in o.inputs])
    tiling = TilingSpec(tile=int(tile), overlap=int(overlap), blend=o.blend, batch_size=int(o.batch_size))
    return Resolved(o, model_path, meta, out, tuple(int(b) for b in bands), tiling, model_digest(model_path))
