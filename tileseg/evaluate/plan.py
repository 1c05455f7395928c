"""The evaluation plan: every image group of the store, its truth (if any) and how that truth is read.

Planning only reads (store metadata, truth headers); everything that can be refused is refused here,
before any Dask graph runs or any report is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from tileseg import store as tstore
from tileseg.errors import EvaluationError, StoreError
from tileseg.evaluate.confusion import MaskHandle
from tileseg.evaluate.options import EvaluateOptions
from tileseg.evaluate.truth import TruthSource, match_truth, plan_truth, truth_files
from tileseg.mask import NODATA
from tileseg.raster import RASTER_EXTENSIONS
from tileseg.uri import gdal_cloud_options, gdal_path, is_remote


@dataclass(frozen=True)
class TruthPlan:
    """The truth of one image: its file, how it is read on the prediction grid, what is left out."""

    path: str
    source: TruthSource
    ignore: frozenset[int | float]
    alignment: str


@dataclass(frozen=True)
class ImagePlan:
    """One image group of the store."""

    name: str
    mask: zarr.Array  # for shape and quicklook reads in this process
    handle: zarr.Array | MaskHandle  # what the Dask graph slices (picklable for Ray when the store is a path)
    classes: tuple[str, ...] | None  # the store's, else the caller's; None: named after the values seen
    source: str | None
    complete: bool | None
    truth: TruthPlan | None

    @property
    def nbins(self) -> int:
        """Class bins of the raw counts: the class count, or every value below NODATA when unnamed."""
        return len(self.classes) if self.classes else NODATA

    @property
    def pixels(self) -> int:
        return int(self.mask.shape[0]) * int(self.mask.shape[1])


@dataclass(frozen=True)
class EvaluationPlan:
    """What one evaluation run reads, computes and writes."""

    store: str  # as reported
    truth: Path
    out_dir: Path
    scheduler: str
    quicklooks: bool
    images: tuple[ImagePlan, ...]  # every group of the store, in store order
    unmatched_groups: tuple[str, ...]
    unmatched_truth: tuple[Path, ...]
    ambiguous: dict[str, list[str]]
    notes: tuple[str, ...]

    @property
    def evaluated(self) -> tuple[ImagePlan, ...]:
        """The images that have truth."""
        return tuple(p for p in self.images if p.truth is not None)


def _store_ref(store: str | Path | zarr.Group) -> Any:
    """What tileseg.store's readers take: a path string, or the zarr store under an open root group."""
    if isinstance(store, zarr.Group):
        return store.store
    return str(store).rstrip("/") if is_remote(store) else str(Path(store))


def _store_label(store: str | Path | zarr.Group) -> str:
    return str(store if not isinstance(store, zarr.Group) else getattr(store.store, "root", store))


def _default_out_dir(store: str | Path | zarr.Group) -> Path:
    """`<store parent>/<store stem>_eval`."""
    if isinstance(store, zarr.Group):
        root = getattr(store.store, "root", None)
        if root is None:
            raise EvaluationError("out_dir is required when the store is not a local directory")
        store = Path(str(root))
    if is_remote(store):  # reports are written locally: beside the current directory
        return Path.cwd() / f"{Path(str(store).rstrip('/')).stem}_eval"
    path = Path(store).resolve()
    return path.parent / f"{path.stem}_eval"


def _match(
    truth: Path, names: list[str], sources: dict[str, str | None], store: Any
) -> tuple[dict[str, Path], list[str], list[Path], dict[str, list[str]]]:
    """Truth file per group: a directory matched by name; one raster goes to the only group, or by name."""
    if truth.is_dir():
        files = truth_files(truth)
        if not files:
            raise EvaluationError(f"no truth rasters ({', '.join(sorted(RASTER_EXTENSIONS))}) in {truth}")
        found = match_truth(sources, files)
    elif len(names) == 1:
        found = {names[0]: truth}, [], [], {}
    else:
        found = match_truth(sources, [truth])
    if not found[0]:
        raise EvaluationError(
            f"no truth in {truth} matches an image group of {store} (groups: {', '.join(names[:10])}"
            f"{', ...' if len(names) > 10 else ''}; ambiguous: {found[3] or 'none'})"
        )
    return found


def _plan_image(
    ref: Any, name: str, attrs: dict, opts: EvaluateOptions, truth: Path | None, notes: list[str]
) -> ImagePlan:
    """One group's plan; its notes (class names, incompleteness, alignment) are appended to `notes`."""
    mask = tstore.open_mask(ref, name)
    handle = MaskHandle(ref, name, tuple(mask.shape), tuple(mask.chunks), mask.dtype) if isinstance(ref, str) else mask
    classes = attrs.get("classes") or (list(opts.classes) if opts.classes else None)
    if attrs.get("classes") and opts.classes and list(opts.classes) != list(attrs["classes"]):
        notes.append(f"{name}: store classes {attrs['classes']} used instead of {list(opts.classes)}")
    if attrs.get("complete") is False:
        notes.append(f"{name}: store group is marked incomplete; unwritten pixels count as no prediction")
    truth_plan = None
    if truth is not None:
        crs_wkt, transform = tstore.read_georef(ref, name)
        src, ignore, how, more = plan_truth(truth, name, crs_wkt, transform, mask.shape, opts.ignore_values)
        notes += more
        truth_plan = TruthPlan(str(truth), src, frozenset(ignore), how)
    return ImagePlan(
        name=name,
        mask=mask,
        handle=handle,
        classes=tuple(classes) if classes else None,
        source=attrs.get("source"),
        complete=attrs.get("complete"),
        truth=truth_plan,
    )


def make_plan(opts: EvaluateOptions) -> EvaluationPlan:
    """Read the store's groups, pair them with truth and align each pair; refuse what cannot be scored."""
    ref = _store_ref(opts.store)
    try:
        names = tstore.image_groups(ref)
    except StoreError as exc:
        raise EvaluationError(str(exc)) from exc
    if not names:
        raise EvaluationError(f"no image groups in store {opts.store}")
    out_dir = Path(opts.out_dir) if opts.out_dir is not None else _default_out_dir(opts.store)
    root = zarr.open_group(ref, mode="r")
    attrs = {n: dict(root[n].attrs) for n in names}
    truth = Path(_truth_path(str(opts.truth)))
    matches, unmatched, unused, ambiguous = _match(truth, names, {n: attrs[n].get("source") for n in names}, opts.store)
    notes: list[str] = []
    images = tuple(_plan_image(ref, n, attrs[n], opts, matches.get(n), notes) for n in names)
    return EvaluationPlan(
        store=_store_label(opts.store),
        truth=truth,
        out_dir=out_dir,
        scheduler=opts.scheduler,
        quicklooks=not opts.no_quicklooks,
        images=images,
        unmatched_groups=tuple(unmatched),
        unmatched_truth=tuple(unused),
        ambiguous=ambiguous,
        notes=tuple(notes),
    )


def _truth_path(truth: str) -> str:
    """A truth raster as GDAL opens it: an object-store URL becomes its /vsi path (one raster, not a
    prefix), with GDAL's object-storage settings in place; local paths unchanged."""
    if not is_remote(truth):
        return truth
    for key, value in gdal_cloud_options().items():
        # The truth is read in dask tasks, so these are set for the process; not the no-listing switch,
        # which would hide local files' sidecars (.msk) from every later read in this process.
        if key != "GDAL_DISABLE_READDIR_ON_OPEN":
            os.environ.setdefault(key, value)
    return gdal_path(truth)
