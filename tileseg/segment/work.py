"""The work item: one block of one image as it travels through Ray Data (read -> predict -> write).

`WorkItem` is the only shape the stages, the actor and the driver see; `to_row`/`from_row` are the one
place where it becomes a Ray Data row and back, so no other module knows a row's column names. Arrays
that are absent travel as empty arrays (a Ray Data column must exist in every row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tileseg.grid import Block, Window

# The row's columns, each named once (prefixed so that a stray literal elsewhere is easy to find).
_IMAGE, _PATH, _GROUP = "work.image", "work.path", "work.group"
_INDEX, _REGION, _READ, _ROWS, _COLS = "work.block", "work.region", "work.read", "work.tile_rows", "work.tile_cols"
_PIXELS, _VALID, _MASK, _PROB = "work.pixels", "work.valid", "work.mask", "work.probability"
_RUN, _SKIPPED, _ERROR = "work.tiles_run", "work.tiles_skipped", "work.error"
_READ_S, _PREDICT_S, _WRITE_S, _READY = "work.read_s", "work.predict_s", "work.write_s", "work.actor_ready"
_UNCERTAINTY, _SCALE, _SHAPE = "work.uncertainty", "work.scale", "work.image_shape"
_COMPUTE, _PRECISION = "work.compute", "work.precision"

ROW_KEYS = (
    *(_IMAGE, _PATH, _GROUP, _INDEX, _REGION, _READ, _ROWS, _COLS, _PIXELS, _VALID, _MASK, _PROB),
    *(_RUN, _SKIPPED, _ERROR, _READ_S, _PREDICT_S, _WRITE_S, _READY, _UNCERTAINTY, _SCALE, _SHAPE),
    *(_COMPUTE, _PRECISION),
)

_EMPTY = {
    _PIXELS: lambda: np.zeros((0, 0, 1), np.uint8),
    _VALID: lambda: np.zeros((0, 0), bool),
    _MASK: lambda: np.zeros((0, 0), np.uint8),
    _PROB: lambda: np.zeros((0, 0, 0), np.float32),
    _UNCERTAINTY: lambda: np.zeros((0, 0), np.uint8),
}


@dataclass(frozen=True)
class WorkItem:
    """One block of one image: where it is, its pixels once read, its result once predicted, and timings.

    `valid` None means every pixel of the read window is valid (the common case travels light);
    `pixels` None means not read (or the read failed: see `error`). Seconds are work time per stage;
    `actor_ready` is when (time.time()) the actor that predicted it had loaded its model. With `scale` != 1
    the model runs on a resampled grid (`tileseg.resample`): `block.read` is then the image window that
    grid needs, `block.tile_rows/cols` are the model grid's, and `image_shape` is the image's (H, W).
    `compute` and `precision` say how the actor ran the model on it ("numpy" or "device", "float32" or
    "bfloat16"; empty until predicted).
    """

    image: int  # index of the image in the job's plan
    path: str
    group: str
    block: Block
    pixels: np.ndarray | None = None
    valid: np.ndarray | None = None
    mask: np.ndarray | None = None
    probability: np.ndarray | None = None
    tiles_run: int = 0
    tiles_skipped: int = 0
    error: str = ""
    read_s: float = 0.0
    predict_s: float = 0.0
    write_s: float = 0.0
    actor_ready: float = 0.0
    uncertainty: np.ndarray | None = None
    scale: float = 1.0
    image_shape: tuple[int, int] = (0, 0)
    compute: str = ""
    precision: str = ""

    @property
    def seconds(self) -> float:
        """Work seconds spent on this block so far (read + predict + write)."""
        return self.read_s + self.predict_s + self.write_s

    def but(self, **changes: Any) -> WorkItem:
        """A copy with `changes` (the item is frozen: each stage hands on a new one)."""
        return dataclasses.replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        """The Ray Data row of this item."""
        b = self.block
        row: dict[str, Any] = {
            _IMAGE: self.image,
            _PATH: self.path,
            _GROUP: self.group,
            _INDEX: b.index,
            _REGION: list(b.region),
            _READ: list(b.read),
            _ROWS: list(b.tile_rows),
            _COLS: list(b.tile_cols),
            _RUN: self.tiles_run,
            _SKIPPED: self.tiles_skipped,
            _ERROR: self.error,
            _READ_S: self.read_s,
            _PREDICT_S: self.predict_s,
            _WRITE_S: self.write_s,
            _READY: self.actor_ready,
            _SCALE: self.scale,
            _SHAPE: list(self.image_shape),
            _COMPUTE: self.compute,
            _PRECISION: self.precision,
        }
        arrays = (_PIXELS, self.pixels), (_VALID, self.valid), (_MASK, self.mask), (_PROB, self.probability)
        for key, value in (*arrays, (_UNCERTAINTY, self.uncertainty)):
            row[key] = _EMPTY[key]() if value is None else value
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WorkItem:
        """The item a Ray Data row (or one row of a numpy batch) holds."""
        block = Block(
            index=int(row[_INDEX]),
            region=Window(*(int(v) for v in row[_REGION])),
            read=Window(*(int(v) for v in row[_READ])),
            tile_rows=tuple(int(v) for v in row[_ROWS]),
            tile_cols=tuple(int(v) for v in row[_COLS]),
        )
        arrays = {key: row.get(key) for key in _EMPTY}
        arrays = {key: (a if a is not None and np.size(a) else None) for key, a in arrays.items()}
        return cls(
            image=int(row[_IMAGE]),
            path=str(row[_PATH]),
            group=str(row[_GROUP]),
            block=block,
            pixels=arrays[_PIXELS],
            valid=arrays[_VALID],
            mask=arrays[_MASK],
            probability=arrays[_PROB],
            uncertainty=arrays[_UNCERTAINTY],
            scale=float(row[_SCALE]),
            image_shape=tuple(int(v) for v in row[_SHAPE]),  # type: ignore[arg-type]
            tiles_run=int(row[_RUN]),
            tiles_skipped=int(row[_SKIPPED]),
            error=str(row[_ERROR] or ""),
            read_s=float(row[_READ_S]),
            predict_s=float(row[_PREDICT_S]),
            write_s=float(row[_WRITE_S]),
            actor_ready=float(row[_READY]),
            compute=str(row[_COMPUTE] or ""),
            precision=str(row[_PRECISION] or ""),
        )


def items_of_batch(batch: Mapping[str, np.ndarray]) -> Iterator[WorkItem]:
    """The items of a Ray Data numpy batch, in order."""
    for i in range(len(batch[_INDEX])):
        yield WorkItem.from_row({key: column[i] for key, column in batch.items()})


def batch_of_items(items: Sequence[WorkItem]) -> dict[str, np.ndarray]:
    """A Ray Data numpy batch of `items`: arrays (their shapes differ) and text as object columns."""
    rows = [item.to_row() for item in items]
    return {key: _column([row[key] for row in rows], key) for key in ROW_KEYS}


def _column(values: list[Any], key: str) -> np.ndarray:
    if key in (_REGION, _READ, _ROWS, _COLS, _SHAPE) and len({len(v) for v in values}) == 1:
        return np.asarray(values, dtype=np.int64)  # equal lengths: one 2-D integer column
    if key in _EMPTY or key in (_REGION, _READ, _ROWS, _COLS, _SHAPE, _PATH, _GROUP, _ERROR, _COMPUTE, _PRECISION):
        column = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            column[i] = np.asarray(v, np.int64) if isinstance(v, list) else v
        return column
    return np.asarray(values)
