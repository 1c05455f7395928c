"""The segment job's options: one frozen dataclass (the CLI is generated from it) and their one check.

`resolve` checks every option against the model before anything happens (no store is touched, no Ray
started) and fixes the values the run needs: the model, the bands and the tiling, each decided once.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tileseg import contract
from tileseg.artifact import ModelMeta, model_digest, read_metadata, refuse_code_layers, resolve_model
from tileseg.blend import BLENDS
from tileseg.errors import RasterError, StoreExistsError
from tileseg.grid import DEFAULT_BLOCK, DEFAULT_CHUNK, Block
from tileseg.options import check, int_list, option
from tileseg.raster import ImageInfo
from tileseg.resample import auto_scale, gsd_mismatch
from tileseg.stitch import TilingSpec
from tileseg.store import PROBABILITY_DTYPES, ZARR_FORMATS, store_format
from tileseg.tta import TTA_MODES
from tileseg.uri import absolute, is_remote, is_uri, object_identity, redact

DESCRIPTION = """\
Segment images (files, directories, globs; object URLs, prefixes and patterns such as
s3://bucket/scenes/ or /vsis3/...; STAC Item/ItemCollection JSON) with a tileseg model into one Zarr store.

Each image is cut into overlapping tiles on one global grid, the model runs on the tiles in a pool
of Ray actors, and the predictions are blended back so no seam shows. The store holds one group per
image with `mask` (y, x; 255 = nodata) and, with --probabilities, `probability` (class, y, x),
georeferenced for xarray/rioxarray/GDAL. Without RAY_ADDRESS an embedded Ray starts on this machine.
"""

DEFAULT_DEPTH = 4  # a model that does not say its depth must take tiles divisible by 2**4
TTA_CHOICES = tuple(TTA_MODES)
GSD_TOLERANCE = 1.5  # an image whose GSD lies outside the model's training GSDs by more than this factor: warned


@dataclass(frozen=True)
class SegmentOptions:
    """Everything `tileseg segment` (and `segment()`) takes; lists given in Python become tuples."""

    inputs: tuple[str, ...] = option(
        help="image files, directories, globs, object URLs/prefixes (s3://, gs://, az://, https://, /vsis3/...) "
        "or STAC Item/ItemCollection JSON",
        positional=True,
        metavar="INPUT",
    )
    out: str = option(help="the Zarr store to write", metavar="STORE.zarr")
    asset: str | None = option(
        None,
        metavar="NAME",
        help="for STAC Item/ItemCollection inputs (.json): the asset to segment (default: the first with "
        "role data or visual, or of type image/tiff)",
    )
    model: str | None = option(None, help="a .keras artifact from `tileseg train` (default: the shipped model)")
    tile: int | None = option(None, help="tile size in pixels (default: the model's)")
    overlap: int | None = option(None, help="overlap between neighbouring tiles (default: tile/4)")
    blend: str = option("gaussian", help="blending window", choices=BLENDS)
    batch_size: int = option(16, help="tiles per model call (an image of fewer grid tiles: its tile count)")
    bands: tuple[int, ...] | None = option(
        None, help="1-based input bands, e.g. 3,2,1 (default: the model's bands)", parse=int_list
    )
    probabilities: bool = option(False, help="also store per-class probabilities")
    tta: str = option(
        "none",
        help="test-time augmentation: average the model over flips (flip: 2x the model's cost) or all 8 "
        "rotations and flips (d4: 8x) of each tile before blending",
        choices=TTA_CHOICES,
    )
    uncertainty: bool = option(
        False,
        help="also store an `uncertainty` layer (uint8 0..254, 255 = nodata): the normalised entropy of the "
        "blended probabilities, or with --tta the disagreement between the transforms",
    )
    resample: str | None = option(
        None,
        metavar="FACTOR|auto",
        help="run the model on a resampled grid: FACTOR image pixels per model pixel (2 = half the resolution), "
        "or auto = the model's training GSD; the output stays on the image's grid",
    )
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
    zarr_format: int | None = option(
        None,
        help="Zarr format of a new store: 3 (default) or 2, which GDAL < 3.11 (rasterio's wheels, older QGIS) "
        "opens georeferenced; a resumed store keeps its own",
        metavar="{2,3}",
        parse=int,
    )
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
    shared_fs: bool = option(
        False,
        help="a local --out is on a filesystem every Ray node mounts (NFS, Lustre, ...): allow it on a multi-node "
        "cluster (otherwise such a cluster needs an object-store --out: s3://, gs://, az://)",
    )
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
        if self.resample is not None:  # one spelling per factor (2, "2" and "2.0" are one plan for --resume)
            try:
                value = f"{float(self.resample):g}"
            except ValueError:
                value = str(self.resample)
            object.__setattr__(self, "resample", value)


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
            tta=o.tta,
            uncertainty=self.uncertainty_measure,
            resample=o.resample,
        )

    @property
    def uncertainty_measure(self) -> str | None:
        """What the uncertainty layer holds (None: no layer): TTA disagreement, or the blended entropy."""
        if not self.options.uncertainty:
            return None
        return "tta_disagreement" if self.options.tta != "none" else "entropy"

    def scale_for(self, info: ImageInfo) -> tuple[float, str | None]:
        """Image pixels per model pixel for this image (1.0 = its own grid), and a warning about its GSD.

        The model's GSDs are the span of its training data (an artifact with a median only: that one
        value); `--resample auto` resamples only an image outside that span, to its nearest end."""
        o, span, gsd = self.options, self.meta.gsd_span, info.gsd
        scale = 1.0
        if o.resample == "auto":
            if gsd is None:
                return 1.0, "no georeferencing, so no GSD: --resample auto leaves it at its own resolution"
            scale = auto_scale(gsd, span)  # type: ignore[arg-type]  # checked: auto needs a model GSD
        elif o.resample is not None:
            scale = float(o.resample)
        if scale > 0.99 and scale < 1.01:
            scale = 1.0
        if span is None or gsd is None:
            return scale, None
        seen = gsd * scale
        ratio = gsd_mismatch(seen, span)
        if ratio <= GSD_TOLERANCE:
            return scale, None
        at = f" resampled by {scale:g}" if scale != 1.0 else ""
        trained = f"{span[0]:.3g} m/px" if span[0] == span[1] else f"{span[0]:.3g}-{span[1]:.3g} m/px"
        return scale, (
            f"ground sampling distance {seen:.3g} m/px{at} is {ratio:.1f}x off the model's {trained}; "
            "predictions may be poor: pass --resample auto (or a factor)"
        )

    def image_plan(self, info: ImageInfo, blocks: Sequence[Block], scale: float = 1.0) -> dict:
        """Everything that decides an image's output, recorded in its group: `--resume` refuses any change."""
        source: dict = {"path": redact(info.path), "height": info.height, "width": info.width, "dtype": info.dtype}
        if not is_uri(info.path):
            st = os.stat(info.path)
            source.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        else:  # an object's version: its size and ETag (or last-modified), so a replaced object is noticed
            try:
                source.update(object_identity(info.path))
            except Exception as exc:  # noqa: BLE001 - a store's own error, told in one line
                first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
                raise RasterError(f"{info.path}: cannot read the object's size and version ({redact(first)})") from None
        return {
            **self.settings(),
            "blocks": hashlib.sha256(repr([(b.region, b.read) for b in blocks]).encode()).hexdigest()[:16],
            "model": {"sha256": self.model_sha256},
            "scale": scale,
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


def check_nodes(out: str, nodes: int, shared_fs: bool) -> None:
    """Refuse a local `--out` on a Ray cluster of more than one node (unless `--shared-fs`): each node
    would write its blocks to its own disk."""
    check(
        nodes <= 1 or shared_fs or is_remote(out),
        "--out",
        f"{redact(out)} is a local path, but the Ray cluster has {nodes} nodes: write to object storage "
        "(s3://, gs://, az://), or pass --shared-fs if every node mounts this path",
    )


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
    check(o.zarr_format in (None, *ZARR_FORMATS), "--zarr-format", f"must be 2 or 3, got {o.zarr_format!r}")
    check(o.tta in TTA_MODES, "--tta", f"must be one of {', '.join(TTA_MODES)}, got {o.tta!r}")
    if o.resample is not None and o.resample != "auto":
        try:
            factor = float(o.resample)
        except ValueError:
            factor = math.nan
        check(0.05 <= factor <= 20, "--resample", f"must be auto or a factor in [0.05, 20], got {o.resample!r}")
    model_path = resolve_model(o.model)
    meta = read_metadata(model_path)
    check(
        o.resample != "auto" or meta.gsd_span is not None,
        "--resample",
        f"auto needs the model's training GSD, and {model_path.name} does not record one: give a factor",
    )
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
    contract.check_location(out)
    if contract.exists(out) and not (o.resume or o.overwrite):
        raise StoreExistsError(f"{redact(out)} exists: pass --resume to continue it or --overwrite to replace it")
    if o.resume:
        contract.check_resume(out)
        kept = store_format(out)
        check(
            o.zarr_format in (None, kept),
            "--zarr-format",
            f"{out} is Zarr v{kept}; a resumed store keeps its format (drop --zarr-format or use a new store)",
        )
    elif o.overwrite:
        contract.check_overwrite(out, [absolute(i) for i in o.inputs])
    tiling = TilingSpec(tile=int(tile), overlap=int(overlap), blend=o.blend, batch_size=int(o.batch_size))
    return Resolved(o, model_path, meta, out, tuple(int(b) for b in bands), tiling, model_digest(model_path))
