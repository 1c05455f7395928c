"""The options of `tileseg evaluate` and of `evaluate()`: one frozen dataclass, checked in one place."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import zarr

from tileseg.errors import EvaluationError
from tileseg.mask import MAX_CLASSES, NODATA
from tileseg.options import check, int_list, option
from tileseg.uri import is_remote, redact

SCHEDULERS = ("threads", "ray")
"""Dask schedulers offered on the command line; the Python API also takes 'sync' (one thread, for debugging)."""
_ALL_SCHEDULERS = (*SCHEDULERS, "sync", "synchronous")
DEFAULT_IGNORE = (NODATA,)
"""Truth values excluded by default (the truth raster's own nodata value is always excluded too)."""


def name_list(text: str) -> tuple[str, ...]:
    """'background,building' -> ('background', 'building'), for --classes."""
    names = tuple(v.strip() for v in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated class names, got {text!r}")
    return names


@dataclass(frozen=True)
class EvaluateOptions:
    """What to score against what, and where the reports go."""

    store: str | Path | zarr.Group = option(help="a .zarr store written by `tileseg segment`", positional=True)
    truth: str | Path | None = option(
        None, help="truth raster, or a directory of rasters named like the images (or give --truth-vectors)"
    )
    truth_vectors: str | Path | None = option(
        None,
        metavar="FILE",
        help="truth polygons (GeoJSON/GeoPackage/GeoParquet, any CRS): rasterised for the pixel metrics, and "
        "matched one-to-one with the predicted objects",
    )
    aoi: str | Path | None = option(
        None, metavar="FILE", help="area where the truth polygons are complete (default: the image's valid area)"
    )
    truth_field: str | None = option(
        None, metavar="NAME", help="attribute of the truth polygons naming their class (default: class 1)"
    )
    objects: bool = option(False, help="also score a raster truth by objects (its connected components)")
    iou_threshold: float = option(0.5, help="IoU at which a predicted and a true object match (SpaceNet/RAMP)")
    ignore: tuple[int, ...] | None = option(
        None,
        parse=int_list,
        metavar="V,V",
        help="truth values to leave out (default 255; the truth nodata is always left out; '' for none)",
    )
    classes: tuple[str, ...] | None = option(
        None, parse=name_list, metavar="NAME,NAME", help="class names when the store has none"
    )
    out_dir: str | Path | None = option(
        None, flag="--out", metavar="DIR", help="report directory (default <store>_eval)"
    )
    scheduler: str = option("threads", choices=SCHEDULERS, help="Dask scheduler")
    no_quicklooks: bool = option(False, help="skip the PNG quicklooks")

    @property
    def ignore_values(self) -> set[int | float]:
        """The truth values to leave out before the truth's own nodata joins them."""
        return set(DEFAULT_IGNORE if self.ignore is None else self.ignore)


def check_options(opts: EvaluateOptions) -> None:
    """Refuse unusable options and missing inputs before anything is read, started or written.

    Raises OptionError naming the option, or EvaluationError naming the file.
    """
    check(
        opts.scheduler in _ALL_SCHEDULERS,
        "--scheduler",
        f"unknown scheduler {opts.scheduler!r}: use 'threads' or 'ray'",
    )
    for v in opts.ignore or ():
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        check(ok, "--ignore", f"truth values must be finite numbers, got {v!r}")
    if opts.classes is not None:
        names = list(opts.classes)
        check(0 < len(names) <= MAX_CLASSES, "--classes", f"need 1..{MAX_CLASSES} class names, got {len(names)}")
        check(all(isinstance(n, str) and n for n in names), "--classes", f"class names must be text: {names}")
        check(len(set(names)) == len(names), "--classes", f"class names repeat: {names}")
    if opts.out_dir is not None:
        out = Path(opts.out_dir)
        check(not out.exists() or out.is_dir(), "--out", f"{out} exists and is not a directory")
    if isinstance(opts.store, zarr.Group):
        if opts.store.path:
            raise EvaluationError("pass the store's root group (or its path), not a sub-group")
    elif not _exists(opts.store):
        raise EvaluationError(f"prediction store not found: {redact(str(opts.store))}")
    check(
        (opts.truth is None) != (opts.truth_vectors is None),
        "--truth",
        "give a truth raster (--truth) or truth polygons (--truth-vectors), one of them",
    )
    check(0 < opts.iou_threshold <= 1, "--iou-threshold", f"must be in (0, 1], got {opts.iou_threshold}")
    for what, path in (("truth", opts.truth), ("truth polygons", opts.truth_vectors), ("AOI", opts.aoi)):
        if path is not None and not _exists(path):
            raise EvaluationError(f"{what} not found: {redact(str(path))}")


def _exists(path: str | Path) -> bool:
    """A local path, or an object-store URL (s3://, gs://, az://, https://) with something there."""
    if is_remote(path):
        from tileseg.contract import exists

        return exists(path)
    return Path(path).exists()
