"""The CPU stages of the pipeline, run as Ray tasks: read a block's window, write a block's result.

Each is a plain function of a WorkItem (`read_block`, `write_block`) with a thin Ray Data row wrapper
(`read_stage`, `write_stage`). A failure never raises: it becomes the item's error, so one bad image
fails alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tileseg import raster, store
from tileseg.errors import RasterError
from tileseg.segment.work import WorkItem
from tileseg.uri import redact


def read_block(item: WorkItem, bands: Sequence[int] | None) -> WorkItem:
    """The item with its read window's pixels (boundless) and valid mask (None when every pixel is valid)."""
    start = time.perf_counter()
    try:
        pixels, valid = raster.read_window(item.path, item.block.read, bands=bands)
    except Exception as exc:  # noqa: BLE001 - any reader failure is this image's error, not the job's
        error = str(exc) if isinstance(exc, RasterError) else f"{item.path}: {exc}"
        return item.but(pixels=None, valid=None, error=error, read_s=time.perf_counter() - start)
    valid = None if valid.all() else valid  # the common case travels light
    return item.but(pixels=pixels, valid=valid, error="", read_s=time.perf_counter() - start)


def write_block(item: WorkItem, out: str) -> WorkItem:
    """Write the item's mask (and probabilities) into its chunks, then its completion flag; drop the arrays."""
    start = time.perf_counter()
    error = item.error
    if not error:
        try:
            store.write_block(
                out, item.group, item.block.region, item.mask, item.probability, item.block.index, item.uncertainty
            )
        except Exception as exc:  # noqa: BLE001
            error = redact(f"{item.path}: writing block {item.block.index} failed: {exc}")
    return item.but(mask=None, probability=None, uncertainty=None, error=error, write_s=time.perf_counter() - start)


def read_stage(row: dict[str, Any], bands: Sequence[int] | None) -> dict[str, Any]:
    """Ray Data `map` wrapper of `read_block`."""
    return read_block(WorkItem.from_row(row), bands).to_row()


def write_stage(row: dict[str, Any], out: str) -> dict[str, Any]:
    """Ray Data `map` wrapper of `write_block`."""
    return write_block(WorkItem.from_row(row), out).to_row()
