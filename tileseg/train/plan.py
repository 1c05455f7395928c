"""The training plan: options resolved against the data (pairs, split, bands, normalisation, steps).

The driver builds one `TrainPlan` (`prepare`) and every Ray Train worker receives it, pickled, as is:
a frozen dataclass read as attributes, so a worker cannot ask for a key the driver never set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.artifact import ModelMeta, read_metadata
from tileseg.data import Pair, as_folder, band_statistics, find_pairs, find_vector_pairs, is_folder, split_pairs, sub
from tileseg.errors import OptionError
from tileseg.labels import LabelSpec
from tileseg.train.options import TrainOptions
from tileseg.uri import absolute


@dataclass(frozen=True)
class TrainPlan:
    """What every worker needs: the options, and what the data implies (absolute paths throughout)."""

    options: TrainOptions
    bands: tuple[int, ...]  # 1-based, resolved from the first training image when not given
    mean: tuple[float, ...]  # per band, of the training pairs' valid pixels
    std: tuple[float, ...]
    class_frequency: tuple[float, ...]
    steps_per_epoch: int  # global batches per epoch
    train_dirs: tuple[str, ...]
    val_dirs: tuple[str, ...] | None  # None: validation pairs held out of the training dirs
    train_pairs: tuple[Pair, ...]
    pair_weights: tuple[float, ...]  # sampling weight per training pair
    val_pairs: tuple[Pair, ...]
    normalisation: str = "dataset"  # "dataset" or "tile" (see tileseg.artifact.NORMALISATIONS)
    gsd: GsdStats | None = None  # m/px of the training rasters (None: none is georeferenced)
    init_from: str | None = None  # the artifact whose weights training starts from (--init)
    resume_from: str | None = None  # the checkpoint folder `--resume` continues from
    trace_dir: str | None = None  # diagnostics: every worker saves its weights after every step here

    @property
    def classes(self) -> tuple[str, ...]:
        return self.options.classes

    @property
    def num_classes(self) -> int:
        return len(self.options.classes)

    @property
    def tile(self) -> int:
        return self.options.tile

    def with_options(self, **changes: Any) -> TrainPlan:
        """The same data plan with some options changed (e.g. the ablation's arch and seed)."""
        return replace(self, options=replace(self.options, **changes))


def _absolute(path: str) -> str:
    """Local paths made absolute (Ray Train workers run in their own directory); URLs kept as given."""
    return absolute(path)


def label_specs(options: TrainOptions) -> list[LabelSpec | None]:
    """Per --images dir, its vector labels (absolute paths) or None for a dir with masks."""
    if options.labels is None:
        return [None] * len(options.images)
    aois = options.aoi or ("-",) * len(options.labels)
    return [
        None if v == "-" else LabelSpec(_absolute(v), tuple(options.classes), options.label_field,
                                        None if a == "-" else _absolute(a))
        for v, a in zip(options.labels, aois, strict=True)
    ]  # fmt: skip


def _collect_pairs(
    images: Sequence[str], masks: Sequence[str] | None, labels: Sequence[LabelSpec | None] | None = None
) -> list[list[Pair]]:
    """Pairs of every images dir (with its masks dir, its vector labels, or as a data dir with images/ and
    masks/), per dir."""
    # Absolute paths: Ray Train workers run in their own working directory.
    folders = [as_folder(absolute(f)) for f in images]
    mask_dirs = [None if f == "-" else as_folder(absolute(f)) for f in masks] if masks is not None else None
    out = []
    for i, folder in enumerate(folders):
        spec = labels[i] if labels else None
        out.append(find_vector_pairs(folder, spec) if spec else find_pairs(folder, mask_dirs[i] if mask_dirs else None))
    return out


@dataclass(frozen=True)
class GsdStats:
    """Ground sampling distances (m/px) of the training rasters: median and 2nd..98th percentile range."""

    median: float
    low: float
    high: float


def gsd_stats(sources: Sequence[Sequence[Pair]], per_source: int = 100) -> GsdStats | None:
    """GSDs of an even sample of each source's training rasters (header reads only); an image without a CRS
    takes its mask's (same grid by contract), and a pair with neither is skipped. None: none georeferenced.
    Sampling per source keeps a small city's resolutions in the range beside a large one's."""
    from tileseg.errors import RasterError
    from tileseg.raster import open_info

    values = []
    for pairs in sources:
        if not pairs:
            continue
        picks = np.unique(np.linspace(0, len(pairs) - 1, min(per_source, len(pairs))).astype(int))
        for pair in (pairs[int(i)] for i in picks):
            for path in (pair.image, pair.mask):
                if path is None:
                    continue
                try:
                    gsd = open_info(path).gsd
                except RasterError:
                    gsd = None
                if gsd:
                    values.append(gsd)
                    break
    if not values:
        return None
    low, median, high = np.percentile(values, [2, 50, 98])
    return GsdStats(float(median), float(low), float(high))


def median_gsd(pairs: Sequence[Pair], sample: int = 200) -> float | None:
    """Median ground sampling distance (m/px) of (an even sample of) the training rasters."""
    stats = gsd_stats([pairs], per_source=sample)
    return None if stats is None else stats.median


def _init_options(options: TrainOptions) -> tuple[TrainOptions, ModelMeta | None]:
    """With --init: the options with the artifact's architecture and classes (a conflicting value given on
    the command line is an error: the weights could not be loaded), and the artifact's metadata."""
    if options.init is None:
        return options, None
    meta = read_metadata(Path(options.init).expanduser())
    defaults = TrainOptions.__dataclass_fields__
    taken = {"arch": meta.arch, "classes": tuple(meta.classes)}
    if meta.base_filters is not None:
        taken["base_filters"] = meta.base_filters
    if meta.depth is not None:
        taken["depth"] = meta.depth
    for key, value in taken.items():
        given = getattr(options, key)
        if given != defaults[key].default and given != value:
            raise OptionError(f"--{key.replace('_', '-')}: {given!r} conflicts with --init {options.init} ({value!r})")
    if options.bands is not None and len(options.bands) != len(meta.bands):
        raise OptionError(f"--bands: {len(options.bands)} band(s) but --init {options.init} takes {len(meta.bands)}")
    return replace(options, **taken), meta


def _sampling_weights(sources: Sequence[Sequence[Pair]], shares: Sequence[float] | None, tile: int) -> list[float]:
    """Per-pair sampling weights: by area in tiles, rescaled so source dir i gets `shares[i]` of samples."""
    weights: list[float] = []
    for i, pairs in enumerate(sources):
        area = np.array([max(1.0, p.height * p.width / tile**2) for p in pairs])
        weights += [float(w) for w in (area if shares is None else float(shares[i]) * area / area.sum())]
    return weights


def _dirs(options: TrainOptions) -> tuple[list[str], list[str] | None]:
    """Training and validation dirs; a data set dir with train/ and val/ splits gives both."""
    images, val_images = list(options.images), list(options.val_images) if options.val_images else None
    if options.masks is None and not val_images:
        # A data set dir with train/ and val/ splits (e.g. ../shared/data/kampala): use its val/ split.
        folders = [as_folder(d) for d in images]
        splits = [d for d in folders if not is_folder(sub(d, "images")) and is_folder(sub(d, "train"))]
        if splits:
            images = [str(sub(d, "train")) if d in splits else str(d) for d in folders]
            val_images = [str(sub(d, "val")) for d in splits if is_folder(sub(d, "val"))] or None
    return images, val_images


def prepare(options: TrainOptions, *, trace_dir: str | Path | None = None) -> TrainPlan:
    """Resolve pairs, the validation split, bands and normalisation statistics: the workers' plan."""
    from tileseg.raster import check_bands, open_info

    options, init = _init_options(options)
    images, val_images = _dirs(options)
    sources = _collect_pairs(images, options.masks, label_specs(options))
    if val_images:
        val_masks = options.val_masks if options.val_images else None
        val_pairs = [p for pairs in _collect_pairs(val_images, val_masks) for p in pairs]
    else:
        held = [split_pairs(pairs, options.val_fraction, options.seed + i) for i, pairs in enumerate(sources)]
        sources, val_pairs = [t for t, _ in held], [p for _, v in held for p in v]
    train_pairs = [p for pairs in sources for p in pairs]
    if init is not None and options.bands is None:
        bands = tuple(init.bands)
    else:
        bands = tuple(int(b) for b in check_bands(open_info(train_pairs[0].image), options.bands))
    stats = band_statistics(train_pairs, list(bands), len(options.classes))
    if init is not None:  # the model learnt on the artifact's normalisation: keep it
        stats = {**stats, "mean": list(init.mean), "std": list(init.std)}
    normalisation = options.normalise or (init.normalisation if init is not None else "dataset")
    steps = options.steps_per_epoch
    if steps is None:
        area = sum(max(1.0, p.height * p.width / options.tile**2) for p in train_pairs)
        steps = max(1, math.ceil(area / options.batch_size))
    return TrainPlan(
        options=options,
        bands=bands,
        mean=tuple(float(v) for v in stats["mean"]),
        std=tuple(float(v) for v in stats["std"]),
        class_frequency=tuple(float(v) for v in stats["class_frequency"]),
        steps_per_epoch=int(steps),
        train_dirs=tuple(absolute(d) for d in images),
        val_dirs=tuple(absolute(d) for d in val_images) if val_images else None,
        train_pairs=tuple(train_pairs),
        pair_weights=tuple(_sampling_weights(sources, options.source_weights, options.tile)),
        val_pairs=tuple(val_pairs),
        normalisation=normalisation,
        gsd=gsd_stats(sources),
        init_from=_absolute(options.init) if options.init else None,
        trace_dir=str(Path(trace_dir).resolve()) if trace_dir else None,
    )
