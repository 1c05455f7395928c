"""Training data: image/mask pairs matched by file stem, random augmented tile windows, and band statistics.

A pair is an image raster (GeoTIFF, PNG, JPEG, ... anything GDAL reads) and a single-band mask raster of the
same size whose pixel values are class indices; 255 and the mask's nodata value mean "not labelled".
Rasters may be of any size: samples are `tile` x `tile` windows at random offsets (a raster smaller than
the tile gives one window padded with invalid pixels), so a 256 chip and a 20000 x 20000 scene feed the
same pipeline.  Every pixel carries a loss weight: 0 where the label is ignored or the image is nodata.

Sample `i` of epoch `e` is a pure function of (seed, e, i) -- the window, the D4 transform and the jitter
are drawn from a generator seeded with exactly that -- so the global sample stream does not depend on how
many workers split it, which is what makes data-parallel runs comparable to single-worker ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tileseg.artifact import normalise
from tileseg.errors import DataError, RasterError
from tileseg.grid import TileGrid, Window
from tileseg.mask import NODATA as IGNORE  # unlabelled pixels: excluded from loss and metrics
from tileseg.raster import RASTER_EXTENSIONS, open_info, read_overview, read_window


@dataclass(frozen=True)
class Pair:
    """One training example: an image raster and its mask raster of the same size."""

    image: Path
    mask: Path
    height: int
    width: int


# --- finding and checking pairs -------------------------------------------------------------------


def _files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Files of `folder` with one of `suffixes`, by stem (a duplicate stem is an error: it is ambiguous)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in found:
                other = found[path.stem].name
                raise DataError(f"{folder}: two files with stem {path.stem!r}: {other}, {path.name}")
            found[path.stem] = path
    return found


def _shape(path: Path) -> tuple[int, int, int]:
    """(height, width, band count) of a raster, or a DataError naming the file."""
    try:
        info = open_info(path)
    except RasterError as exc:
        raise DataError(str(exc)) from None
    return info.height, info.width, len(info.data_bands)


def find_pairs(images: str | Path, masks: str | Path | None = None, *, strict: bool = False) -> list[Pair]:
    """Image/mask pairs matched by file stem: `images` and `masks` dirs, or one dir with `images/` + `masks/`.

    Images without a mask are reported (a warning; an error when `strict`); masks without an image are
    ignored.  Every pair is opened once to check it is readable and that both rasters have the same size,
    so a bad file fails here, by name, and not hours into training.
    """
    images = Path(images)
    if masks is None:
        if not (images / "images").is_dir() or not (images / "masks").is_dir():
            raise DataError(f"{images}: expected images and masks dirs, or a dir with images/ and masks/")
        images, masks = images / "images", images / "masks"
    masks = Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise DataError(f"{folder}: not a directory")
    image_files = _files(images, RASTER_EXTENSIONS)
    mask_files = _files(masks, RASTER_EXTENSIONS)
    orphans = sorted(set(image_files) - set(mask_files))
    if orphans:
        shown = ", ".join(image_files[s].name for s in orphans[:5]) + (" ..." if len(orphans) > 5 else "")
        message = f"{images}: {len(orphans)} image(s) without a mask in {masks}: {shown}"
        if strict:
            raise DataError(message)
        warnings.warn(message, stacklevel=2)
    pairs = []
    for stem in sorted(set(image_files) & set(mask_files)):
        ih, iw, _ = _shape(image_files[stem])
        mh, mw, mc = _shape(mask_files[stem])
        if (ih, iw) != (mh, mw):
            raise DataError(f"{mask_files[stem]}: mask is {mh}x{mw} but image {image_files[stem]} is {ih}x{iw}")
        if mc != 1:
            raise DataError(f"{mask_files[stem]}: a mask must have 1 band, it has {mc}")
        pairs.append(Pair(image_files[stem], mask_files[stem], ih, iw))
    if not pairs:
        raise DataError(f"no image/mask pairs in {images} and {masks}")
    return pairs


def split_pairs(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out about `fraction` of `pairs` (at least one) for validation; returns (train, val)."""
    if not 0 < fraction < 1 or len(pairs) < 2:
        raise DataError(f"cannot hold out a fraction {fraction} of {len(pairs)} pair(s)")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, round(len(pairs) * fraction))
    val = set(order[:n_val].tolist())
    return [p for i, p in enumerate(pairs) if i not in val], [p for i, p in enumerate(pairs) if i in val]


# --- reading ---------------------------------------------------------------------------------------


def read_image(path: Path, window: Window, bands: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Boundless read of `window`: (pixels (h, w, C) float32 raw values, valid (h, w) bool)."""
    try:
        pixels, valid = read_window(path, window, bands=bands)
    except RasterError as exc:
        raise DataError(str(exc)) from None
    return pixels.astype("float32"), valid


def read_mask(path: Path, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Boundless read of a mask window: (class indices (h, w) int32, labelled (h, w) bool)."""
    try:
        data, valid = read_window(path, window, bands=[1], fill=0)
    except RasterError as exc:
        raise DataError(str(exc)) from None
    labels = data[..., 0].astype("int32")
    labelled = valid & (labels != IGNORE)
    return np.where(labelled, labels, 0), labelled


def read_pair(pair: Pair, window: Window, bands: Sequence[int] | None, num_classes: int):
    """Image, labels and per-pixel weights (1 = labelled and valid, else 0) of one window of a pair."""
    image, valid = read_image(pair.image, window, bands)
    labels, labelled = read_mask(pair.mask, window)
    if labelled.any() and labels[labelled].max() >= num_classes:
        raise DataError(f"{pair.mask}: class index {labels[labelled].max()} but only {num_classes} classes")
    return image, labels, (valid & labelled).astype("float32")


# --- statistics ------------------------------------------------------------------------------------


def band_statistics(
    pairs: Sequence[Pair], bands: Sequence[int] | None, num_classes: int, *, max_pixels: int = 4_000_000
) -> dict[str, list[float]]:
    """Per-band mean/std of valid labelled pixels and the class frequencies, over (a sample of) `pairs`.

    Each raster contributes at most max_pixels / len(pairs) pixels (a decimated read of a big raster),
    so the cost is bounded whatever the data size.  Statistics are in raw pixel units.
    """
    budget = max(4096, max_pixels // max(len(pairs), 1))
    total = total_sq = None
    count = 0.0
    class_counts = np.zeros(num_classes, dtype=np.float64)
    for pair in pairs:
        scale = max(1.0, np.sqrt(pair.height * pair.width / budget))
        max_size = max(1, int(max(pair.height, pair.width) / scale))
        try:
            image, valid = read_overview(pair.image, max_size, bands=bands)
            mask, labelled = read_overview(pair.mask, max_size, bands=[1])
        except RasterError as exc:
            raise DataError(str(exc)) from None
        if image.shape[:2] != mask.shape[:2]:
            raise DataError(f"{pair.mask}: decimated mask {mask.shape[:2]} != image {image.shape[:2]}")
        labels = mask[..., 0].astype(np.int64)
        keep = valid & labelled & (labels != IGNORE)
        pixels = image[keep].astype(np.float64).T  # (C, n)
        total = pixels.sum(axis=1) if total is None else total + pixels.sum(axis=1)
        total_sq = (pixels**2).sum(axis=1) if total_sq is None else total_sq + (pixels**2).sum(axis=1)
        count += pixels.shape[1]
        class_counts += np.bincount(labels[keep], minlength=num_classes)[:num_classes]
    if not count:
        raise DataError("no valid labelled pixels to compute statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # a constant band: leave it unscaled rather than divide by 0
    return {
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "class_frequency": [float(v) for v in class_counts / max(class_counts.sum(), 1.0)],
    }


# --- augmentation ----------------------------------------------------------------------------------


def d4(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0..7) element of the dihedral group D4 applied to the first two axes of `array`."""
    if k >= 4:
        array = array[:, ::-1]
    return np.rot90(array, k % 4, axes=(0, 1))


def jitter(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Light radiometric jitter of a normalised image: contrast x(1 +- s), brightness +- s (in std units)."""
    if strength <= 0:
        return x
    contrast = rng.uniform(1 - strength, 1 + strength)
    brightness = rng.uniform(-strength, strength)
    return (x * contrast + brightness).astype("float32")


# --- sampling --------------------------------------------------------------------------------------


class TileSampler:
    """Random `tile` x `tile` training samples: window, D4 transform and jitter drawn per sample.

    Pairs are drawn in proportion to `pair_weights`, by default their area in tiles (so a big scene counts
    for more than one chip);
    a window whose labelled-and-valid fraction is under `min_valid` is redrawn (up to `tries` times).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        tile: int,
        bands: Sequence[int] | None,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        seed: int,
        augment: bool = True,
        jitter: float = 0.1,
        min_valid: float = 0.5,
        tries: int = 10,
        pair_weights: Sequence[float] | None = None,
    ) -> None:
        if not pairs:
            raise DataError("no training pairs")
        self.pairs = list(pairs)
        self.tile = int(tile)
        self.bands = list(bands) if bands else None
        self.mean = np.asarray(mean, dtype="float32")
        self.std = np.asarray(std, dtype="float32")
        self.num_classes = num_classes
        self.seed = int(seed)
        self.augment = augment
        self.jitter = jitter
        self.min_valid = min_valid
        self.tries = tries
        if pair_weights is None:
            pair_weights = [max(1.0, p.height * p.width / self.tile**2) for p in self.pairs]
        weights = np.asarray(pair_weights, dtype=np.float64)
        if weights.shape != (len(self.pairs),) or (weights < 0).any() or weights.sum() <= 0:
            raise DataError("pair_weights must be one non-negative weight per pair, not all zero")
        self.cumulative = np.cumsum(weights / weights.sum())

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample `index` of `epoch`: (x (t, t, C) normalised, labels (t, t) int32, weights (t, t))."""
        rng = np.random.default_rng([self.seed, epoch, index])
        for _ in range(self.tries):
            pair = self.pairs[min(int(np.searchsorted(self.cumulative, rng.random())), len(self.pairs) - 1)]
            row = int(rng.integers(0, max(pair.height - self.tile, 0) + 1))
            col = int(rng.integers(0, max(pair.width - self.tile, 0) + 1))
            image, labels, weights = read_pair(
                pair, Window(row, col, self.tile, self.tile), self.bands, self.num_classes
            )
            if weights.mean() >= self.min_valid:
                break
        x = normalise(image, self.mean, self.std) * (weights[..., None] > 0)
        if self.augment:
            k = int(rng.integers(0, 8))
            x, labels, weights = d4(x, k), d4(labels, k), d4(weights, k)
            x = jitter(x, rng, self.jitter)
        return np.ascontiguousarray(x), np.ascontiguousarray(labels), np.ascontiguousarray(weights)

    def batch(self, epoch: int, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stack the samples `indices` of `epoch` into (x, labels, weights) arrays."""
        samples = [self.sample(epoch, i) for i in indices]
        return tuple(np.stack(parts) for parts in zip(*samples, strict=True))  # type: ignore[return-value]


def shard_indices(step: int, global_batch: int, rank: int, world: int) -> range:
    """Indices of the samples of global batch `step` that worker `rank` of `world` processes.

    The global batch is samples [step * B, (step + 1) * B); each worker takes a contiguous B / world slice.
    """
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} workers")
    local = global_batch // world
    start = step * global_batch + rank * local
    return range(start, start + local)


# --- validation tiles ------------------------------------------------------------------------------


def _owned(origins: np.ndarray, tile: int, length: int) -> list[tuple[int, int]]:
    """Per tile, the [lo, hi) pixel range (relative to the tile) it alone scores, so no pixel counts twice."""
    spans, covered = [], 0
    for origin in origins.tolist():
        lo, hi = max(covered, origin), min(origin + tile, length)
        spans.append((lo - origin, hi - origin))
        covered = hi
    return spans


def validation_tiles(
    pairs: Sequence[Pair],
    *,
    tile: int,
    bands: Sequence[int] | None,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    whole_read_pixels: int = 4096 * 4096,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every tile of every pair on its tile grid (no overlap), each pixel weighted once: (x, labels, weights).

    The whole validation set is scored, not random windows, and pixels shared by the snapped edge tile
    are counted by one tile only.  Rasters up to `whole_read_pixels` are read once, bigger ones per tile.
    """
    mean_a, std_a = np.asarray(mean, dtype="float32"), np.asarray(std, dtype="float32")
    for pair in pairs:
        grid = TileGrid(pair.height, pair.width, tile, 0)
        row_spans = _owned(grid.rows, tile, pair.height)
        col_spans = _owned(grid.cols, tile, pair.width)
        whole = None
        if pair.height * pair.width <= whole_read_pixels:  # one read, then tiles cut in memory
            whole = read_pair(pair, Window(0, 0, max(pair.height, tile), max(pair.width, tile)), bands, num_classes)
        for r, row in enumerate(grid.rows.tolist()):
            for c, col in enumerate(grid.cols.tolist()):
                if whole is not None:
                    image, labels, weights = (a[row : row + tile, col : col + tile] for a in whole)
                else:
                    image, labels, weights = read_pair(pair, Window(row, col, tile, tile), bands, num_classes)
                own = np.zeros_like(weights)
                (r0, r1), (c0, c1) = row_spans[r], col_spans[c]
                own[r0:r1, c0:c1] = 1.0
                x = normalise(image, mean_a, std_a) * (weights[..., None] > 0)
                yield x, labels, weights * own
