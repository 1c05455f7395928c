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

from tileseg.artifact import NORMALISATIONS, normalise, normalise_tiles
from tileseg.augment import Augment, draw_scale, photometric, reference_range, resize_sample
from tileseg.errors import DataError, RasterError
from tileseg.grid import TileGrid, Window
from tileseg.labels import LabelSpec, grid_box, labelled_part, rasterize_window
from tileseg.mask import NODATA as IGNORE  # unlabelled pixels: excluded from loss and metrics
from tileseg.raster import RASTER_EXTENSIONS, open_info, read_overview, read_window
from tileseg.tta import d4  # the D4 element k on the first two axes, as TTA uses it
from tileseg.uri import is_uri, redact, url_of

# A folder is a local Path, or the URL of an object-store prefix (s3://bucket/data/images) as text.
Folder = Path | str


@dataclass(frozen=True)
class Pair:
    """One training example: an image raster and its labels -- a mask raster of the same size, or vector
    labels (`labels`) rasterised onto the image's own grid (`crs`, `transform`) when a window is read."""

    image: Path | str  # a local path, or an object's URL
    mask: Path | str | None
    height: int
    width: int
    labels: LabelSpec | None = None
    crs: str | None = None
    transform: tuple[float, ...] | None = None


# --- finding and checking pairs -------------------------------------------------------------------


def as_folder(path: str | Path) -> Folder:
    """A local folder as a Path; an object-store prefix (s3://..., /vsis3/...) as its URL, without a trailing /."""
    text = str(path)
    return url_of(text).rstrip("/") if is_uri(text) else Path(text)


def sub(folder: Folder, name: str) -> Folder:
    """`folder`/`name`, for paths and URLs alike."""
    return f"{folder}/{name}" if isinstance(folder, str) else folder / name


def is_folder(folder: Folder) -> bool:
    """Whether `folder` is a directory, or a prefix with objects under it."""
    if not isinstance(folder, str):
        return folder.is_dir()
    import fsspec

    try:
        fs, key = fsspec.core.url_to_fs(folder)
        return bool(fs.isdir(key))
    except Exception:  # noqa: BLE001 - no bucket, no access: not a folder we can read (the caller says so)
        return False


def _not_a_folder(folder: Folder) -> str:
    if isinstance(folder, str):
        return f"{redact(folder)}: no objects under this prefix (or no such bucket, or no access)"
    return f"{folder}: not a directory"


def _listing(folder: Folder) -> list[tuple[str, Path | str]]:
    """(file name, path or URL) of the files directly in `folder`, sorted by name."""
    if not isinstance(folder, str):
        return [(p.name, p) for p in sorted(folder.iterdir()) if p.is_file()]
    import fsspec

    try:
        fs, key = fsspec.core.url_to_fs(folder)
        entries = fs.ls(key, detail=True)
    except Exception as exc:  # noqa: BLE001 - each store fails its own way: one line naming the folder
        why = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        raise DataError(f"{redact(folder)}: cannot list ({redact(why)})") from None
    protocol = folder.split("://", 1)[0]
    files = [e["name"] for e in entries if e.get("type") == "file"]
    return sorted((name.rsplit("/", 1)[-1], f"{protocol}://{name}") for name in files)


def _files(folder: Folder, suffixes: Sequence[str]) -> dict[str, Path | str]:
    """Files of `folder` with one of `suffixes`, by stem (a duplicate stem is an error: it is ambiguous)."""
    found: dict[str, Path | str] = {}
    for name, path in _listing(folder):
        stem, suffix = Path(name).stem, Path(name).suffix.lower()
        if suffix in suffixes and not name.startswith("."):
            if stem in found:
                other = Path(str(found[stem])).name
                raise DataError(f"{redact(str(folder))}: two files with stem {stem!r}: {other}, {name}")
            found[stem] = path
    return found


def _shape(path: Path | str) -> tuple[int, int, int]:
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
    images = as_folder(images)
    if masks is None:
        if not is_folder(sub(images, "images")) or not is_folder(sub(images, "masks")):
            raise DataError(f"{images}: expected images and masks dirs, or a dir with images/ and masks/")
        images, masks = sub(images, "images"), sub(images, "masks")
    masks = as_folder(masks)
    for folder in (images, masks):
        if not is_folder(folder):
            raise DataError(_not_a_folder(folder))
    image_files = _files(images, RASTER_EXTENSIONS)
    mask_files = _files(masks, RASTER_EXTENSIONS)
    orphans = sorted(set(image_files) - set(mask_files))
    if orphans:
        shown = ", ".join(Path(str(image_files[s])).name for s in orphans[:5]) + (" ..." if len(orphans) > 5 else "")
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


def find_vector_pairs(images: str | Path, labels: LabelSpec) -> list[Pair]:
    """Every image of `images` (or of its `images/` subdir) with vector `labels`; images no label reaches
    (outside the AOI, or untouched by any polygon without an AOI) are left out: they hold no labelled pixel."""
    from affine import Affine

    folder = as_folder(images)
    if is_folder(sub(folder, "images")):
        folder = sub(folder, "images")
    if not is_folder(folder):
        raise DataError(_not_a_folder(folder))
    vector = labels.load()
    pairs = []
    for path in _files(folder, RASTER_EXTENSIONS).values():
        try:
            info = open_info(path)
        except RasterError as exc:
            raise DataError(str(exc)) from None
        if not info.crs:
            raise DataError(f"{path}: an image without a CRS cannot take vector labels ({labels.path})")
        footprint = grid_box(Affine(*info.transform[:6]), (info.height, info.width))
        if labelled_part(vector, info.crs, footprint) > 0:
            pairs.append(Pair(path, None, info.height, info.width, labels, info.crs, tuple(info.transform[:6])))
    if not pairs:
        raise DataError(
            f"{folder}: no image overlaps the labels of {labels.path}" + (f" in {labels.aoi}" if labels.aoi else "")
        )
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


def read_image(path: Path | str, window: Window, bands: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Boundless read of `window`: (pixels (h, w, C) float32 raw values, valid (h, w) bool)."""
    try:
        pixels, valid = read_window(path, window, bands=bands)
    except RasterError as exc:
        raise DataError(str(exc)) from None
    return pixels.astype("float32"), valid


def read_mask(path: Path | str, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Boundless read of a mask window: (class indices (h, w) int32, labelled (h, w) bool)."""
    try:
        data, valid = read_window(path, window, bands=[1], fill=0)
    except RasterError as exc:
        raise DataError(str(exc)) from None
    labels = data[..., 0].astype("int32")
    labelled = valid & (labels != IGNORE)
    return np.where(labelled, labels, 0), labelled


def read_vector(pair: Pair, window: Window, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A pair's vector labels rasterised on `window` of its image's grid (at `shape`, default the window's):
    (class indices (h, w) int32, labelled (h, w) bool)."""
    from affine import Affine

    assert pair.labels is not None and pair.transform is not None
    base = Affine(*pair.transform)
    h, w = shape or (window.height, window.width)
    transform = base * Affine.translation(window.col, window.row) * Affine.scale(window.width / w, window.height / h)
    box = grid_box(base, (pair.height, pair.width))
    mask, _ = rasterize_window(pair.labels.load(), pair.crs, transform, (h, w), image_box=box)
    labels = mask.astype("int32")
    labelled = labels != IGNORE
    if shape is None:  # past the image's edge nothing is labelled, as with a mask raster
        on_image = np.zeros_like(labelled)
        r, c = window.row, window.col
        on_image[max(0, -r) : max(0, pair.height - r), max(0, -c) : max(0, pair.width - c)] = True
        labelled &= on_image
    return np.where(labelled, labels, 0), labelled


def read_labels_of(pair: Pair, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """A pair's labels on `window`, from its mask raster or its vector labels."""
    return read_vector(pair, window) if pair.labels is not None else read_mask(pair.mask, window)  # type: ignore[arg-type]


def read_sample(pair: Pair, window: Window, bands: Sequence[int] | None, num_classes: int):
    """(image, image valid, labels, weights: 1 = labelled and valid, else 0) of one window of a pair."""
    image, valid = read_image(pair.image, window, bands)
    labels, labelled = read_labels_of(pair, window)
    if labelled.any() and labels[labelled].max() >= num_classes:
        source = pair.mask if pair.labels is None else pair.labels.path
        raise DataError(f"{source}: class index {labels[labelled].max()} but only {num_classes} classes")
    return image, valid, labels, (valid & labelled).astype("float32")


def read_pair(pair: Pair, window: Window, bands: Sequence[int] | None, num_classes: int):
    """Image, labels and per-pixel weights (1 = labelled and valid, else 0) of one window of a pair."""
    image, _, labels, weights = read_sample(pair, window, bands, num_classes)
    return image, labels, weights


def normalise_sample(
    image: np.ndarray, valid: np.ndarray, mean: np.ndarray, std: np.ndarray, mode: str = "dataset"
) -> np.ndarray:
    """A raw window as the model sees it: by the data set's statistics or the window's own valid pixels
    (`ModelMeta.normalise` does the same at inference); 0 where the image is invalid."""
    if mode == "tile":
        return normalise_tiles(image, valid, 0.1 * np.asarray(std, np.float32))
    return normalise(image, mean, std) * valid[..., None]


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
            if pair.labels is not None:
                full = Window(0, 0, pair.height, pair.width)
                vec, labelled = read_vector(pair, full, image.shape[:2])
                mask = np.where(labelled, vec, IGNORE)[..., None]
            else:
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


def jitter(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Light radiometric jitter of a normalised image: contrast x(1 +- s), brightness +- s (in std units)."""
    if strength <= 0:
        return x
    contrast = rng.uniform(1 - strength, 1 + strength)
    brightness = rng.uniform(-strength, strength)
    return (x * contrast + brightness).astype("float32")


# --- sampling --------------------------------------------------------------------------------------


class TileSampler:
    """Random `tile` x `tile` training samples: window, scale, D4 transform and jitter drawn per sample.

    Pairs are drawn in proportion to `pair_weights`, by default their area in tiles (so a big scene counts
    for more than one chip);
    a window whose labelled-and-valid fraction is under `min_valid` is redrawn (up to `tries` times; a
    zoomed-out window bigger than its raster needs only the share the raster can fill).  `augmentations`
    adds scale (a window of round(tile * s) resampled to the tile) and photometric augmentations on raw
    pixels; `normalisation` "tile" standardises each sample by its own valid pixels.
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
        augmentations: Augment | None = None,
        normalisation: str = "dataset",
    ) -> None:
        if normalisation not in NORMALISATIONS:
            raise DataError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
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
        self.aug = augmentations or Augment()
        self.normalisation = normalisation
        self.hi = reference_range(self.mean, self.std)
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
            s = draw_scale(rng, self.aug) if self.augment else 1.0
            n = max(1, round(self.tile * s))
            row, col = self._offset(rng, pair.height, n, s), self._offset(rng, pair.width, n, s)
            image, valid, labels, weights = read_sample(pair, Window(row, col, n, n), self.bands, self.num_classes)
            if weights.mean() >= self.min_valid * min(1.0, pair.height * pair.width / n**2):
                break
        image, valid, labels, weights = resize_sample(image, valid, labels, weights, self.tile)
        if self.augment and self.aug.photometric:
            image = photometric(image, valid, rng, self.aug, self.hi)
        x = normalise_sample(image, valid, self.mean, self.std, self.normalisation)
        if self.augment:
            k = int(rng.integers(0, 8))
            x, labels, weights = d4(x, k), d4(labels, k), d4(weights, k)
            x = jitter(x, rng, self.jitter)
        return np.ascontiguousarray(x), np.ascontiguousarray(labels), np.ascontiguousarray(weights)

    @staticmethod
    def _offset(rng: np.random.Generator, length: int, n: int, s: float) -> int:
        """A window start: inside the raster; a zoomed window longer than the raster may start before it."""
        if n > length and s != 1.0:
            return int(rng.integers(length - n, 1))
        return int(rng.integers(0, max(length - n, 0) + 1))

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
    normalisation: str = "dataset",
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
            whole = read_sample(pair, Window(0, 0, max(pair.height, tile), max(pair.width, tile)), bands, num_classes)
        for r, row in enumerate(grid.rows.tolist()):
            for c, col in enumerate(grid.cols.tolist()):
                if whole is not None:
                    image, valid, labels, weights = (a[row : row + tile, col : col + tile] for a in whole)
                else:
                    image, valid, labels, weights = read_sample(pair, Window(row, col, tile, tile), bands, num_classes)
                own = np.zeros_like(weights)
                (r0, r1), (c0, c1) = row_spans[r], col_spans[c]
                own[r0:r1, c0:c1] = 1.0
                x = normalise_sample(image, valid, mean_a, std_a, normalisation)
                yield x, labels, weights * own
