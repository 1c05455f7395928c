"""Chunked confusion matrices: one small Dask task per group of Zarr chunks, summed by a tree reduction.

Each task reads one window of the prediction `mask` and the matching window of the truth (on the
prediction grid, see `truth.TruthSource`) and returns a (nbins + 1, nbins + 2) count matrix, so memory
stays bounded by a few chunks whatever the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from tileseg import store as tstore
from tileseg.evaluate.truth import TruthSource
from tileseg.mask import NODATA

if TYPE_CHECKING:
    from tileseg.evaluate.plan import EvaluationPlan

TARGET_BLOCK_PIXELS = 2**21
"""Pixels per Dask task: whole Zarr chunks grouped up to about this many (2 MPix, a few MiB per task)."""


def _block_confusion(
    pred: np.ndarray,
    truth: TruthSource,
    ignore: tuple[float, ...],
    nbins: int,
    block_info: dict | None = None,
) -> np.ndarray:
    """Confusion counts of one chunk, shape (1, 1, nbins + 1, nbins + 2).

    Truth index nbins = a (non-ignored) value outside [0, nbins); prediction index nbins = out of range,
    nbins + 1 = no prediction (NODATA). Pixels whose truth is ignored are not counted at all.
    """
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    t = truth.read((r0, r1), (c0, c1))
    keep = ~np.isin(t, np.asarray(ignore, dtype=np.float64)) if ignore else np.ones(t.shape, bool)
    if t.dtype.kind == "f":
        keep &= np.isfinite(t)
    t = t[keep]
    p = pred[keep]
    if t.dtype.kind == "f":
        ti = np.where((t >= 0) & (t < nbins) & (t == np.floor(t)), t, nbins).astype(np.int64)
    else:
        ti = np.where((t >= 0) & (t < nbins), t, nbins).astype(np.int64)
    pi = np.where(p == NODATA, nbins + 1, np.where(p < nbins, p, nbins)).astype(np.int64)
    counts = np.bincount(ti * (nbins + 2) + pi, minlength=(nbins + 1) * (nbins + 2))
    return counts.reshape(1, 1, nbins + 1, nbins + 2)


def _eval_chunks(mask: zarr.Array | MaskHandle) -> tuple[int, int]:
    """Dask chunk shape: whole Zarr chunks, grouped up to about TARGET_BLOCK_PIXELS."""
    cy, cx = mask.chunks
    f = max(1, int(math.sqrt(TARGET_BLOCK_PIXELS / (cy * cx))))
    return min(cy * f, mask.shape[0]), min(cx * f, mask.shape[1])


@dataclass(frozen=True)
class MaskHandle:
    """Picklable, lazily opened stand-in for a store's `mask` that Dask slices like the Zarr array.

    Only the store path and group name travel in the task graph, so Ray workers reopen the array
    themselves (a zarr.Array carries codec objects that do not survive Ray's pickling).
    """

    store: str
    name: str
    shape: tuple[int, int]
    chunks: tuple[int, int]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Always 2: (y, x)."""
        return 2

    def __getitem__(self, key: Any) -> np.ndarray:
        # opened per read (two small JSON files): never stale if the store is rewritten between runs
        return np.asarray(tstore.open_mask(self.store, self.name)[key])


def confusion_graph(mask: zarr.Array | MaskHandle, truth: TruthSource, ignore: set[int | float], nbins: int) -> Any:
    """Lazy Dask array of the summed (nbins+1, nbins+2) confusion counts of one image."""
    import dask.array as da
    from dask.base import tokenize

    name = "tileseg-mask-" + tokenize(
        getattr(mask, "store", None),
        getattr(mask, "name", None),
        mask.shape,
        id(mask) if isinstance(mask, zarr.Array) else None,
    )
    pred = da.from_array(mask, chunks=_eval_chunks(mask), name=name, asarray=False, fancy=False)
    nby, nbx = pred.numblocks
    blocks = pred.map_blocks(
        _block_confusion,
        truth=truth,
        ignore=tuple(sorted(ignore)),
        nbins=nbins,
        new_axis=[2, 3],
        chunks=((1,) * nby, (1,) * nbx, (nbins + 1,), (nbins + 2,)),
        dtype=np.int64,
        meta=np.empty((0, 0, 0, 0), dtype=np.int64),
    )
    return blocks.sum(axis=(0, 1), dtype=np.int64, split_every=8)


def _run_graphs(graphs: list[Any], scheduler: str) -> list[np.ndarray]:
    """Compute the graphs together with the chosen Dask scheduler (Ray through tileseg's RaySession)."""
    import dask

    if scheduler != "ray":
        return list(dask.compute(*graphs, scheduler="threads" if scheduler == "threads" else "sync"))
    from ray.util.dask import ray_dask_get

    from tileseg.ray_session import RaySession

    with RaySession():  # RAY_ADDRESS's cluster, a Ray already running here, or an embedded one cleaned after
        return list(dask.compute(*graphs, scheduler=ray_dask_get))


def compute_counts(plan: EvaluationPlan) -> dict[str, np.ndarray]:
    """Raw (nbins + 1, nbins + 2) counts of every image that has truth, keyed by group name."""
    images = plan.evaluated
    graphs = [confusion_graph(p.handle, p.truth.source, p.truth.ignore, p.nbins) for p in images]
    return {p.name: np.asarray(c) for p, c in zip(images, _run_graphs(graphs, plan.scheduler), strict=True)}


@dataclass(frozen=True)
class ImageCounts:
    """One image's raw counts split into the K x K confusion matrix and the counts beside it."""

    cm: np.ndarray
    no_prediction_by_class: np.ndarray
    truth_out_of_range: int
    pred_out_of_range: int
    counted: int

    @property
    def no_prediction(self) -> int:
        return int(self.no_prediction_by_class.sum())

    @classmethod
    def split(cls, full: np.ndarray, nbins: int, k: int) -> ImageCounts:
        """Separate the raw chunk counts (see `_block_confusion`) for an image of k classes."""
        return cls(
            cm=full[:k, :k],
            no_prediction_by_class=full[:k, nbins + 1],
            truth_out_of_range=int(full[nbins, :].sum()),
            pred_out_of_range=int(full[:nbins, nbins].sum()),
            counted=int(full.sum()),
        )
