"""`tileseg train`'s options: one frozen dataclass from which the CLI, jobs/train.py and the Python API come.

Every option is declared once with `tileseg.options.option` (default, help, flag); `validate` checks them
all, before anything is read or written, and raises OptionError naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tileseg.artifact import ARCHS, NORMALISATIONS
from tileseg.errors import OptionError
from tileseg.mask import MAX_CLASSES
from tileseg.options import check, option

DEFAULT_CLASSES = ("background", "building")
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run is asked to do; what the data implies (bands, statistics) is in TrainPlan."""

    images: tuple[str, ...] = option(
        help="image dirs, data dirs with images/ and masks/, or data set dirs with train/ and val/ splits of "
        "those (pairs match by file stem)",
        metavar="DIR",
        many=True,
    )
    out: str = option(help="the model artifact to write", metavar="MODEL.keras")
    masks: tuple[str, ...] | None = option(
        None, help="mask dirs, one per --images dir ('-' for a dir labelled by --labels)", metavar="DIR", many=True
    )
    labels: tuple[str, ...] | None = option(
        None,
        help="vector labels (GeoJSON, GeoParquet, GeoPackage; any CRS), one per --images dir: '-' for a dir "
        "with masks; polygons are rasterised on each image's grid as windows are drawn",
        metavar="FILE",
        many=True,
    )
    aoi: tuple[str, ...] | None = option(
        None,
        help="area of interest per --labels file ('-': none): labels are complete inside it, unknown (weight 0) "
        "outside; without one, images no polygon touches are unknown",
        metavar="FILE",
        many=True,
    )
    label_field: str | None = option(
        None, help="attribute holding each polygon's class name or index (default: every polygon is class 1)"
    )
    arch: str = option("attention_unet", help="model architecture", choices=ARCHS)
    classes: tuple[str, ...] = option(
        DEFAULT_CLASSES, help="class names; mask value i is class i (255 / nodata = ignored)", metavar="NAME", many=True
    )
    bands: tuple[int, ...] | None = option(None, help="1-based bands (default: all)", metavar="B", parse=int, many=True)
    tile: int = option(256, help="training window side in pixels")
    epochs: int = option(10, help="epochs to train")
    batch_size: int = option(8, help="GLOBAL batch size, split evenly over the workers")
    lr: float = option(1e-3, help="peak learning rate (warmup + cosine decay)")
    val_images: tuple[str, ...] | None = option(None, help="validation image (or data) dirs", metavar="DIR", many=True)
    val_masks: tuple[str, ...] | None = option(None, help="validation mask dirs", metavar="DIR", many=True)
    val_fraction: float = option(0.1, help="fraction of pairs held out when no --val-images is given")
    workers: int = option(1, help="Ray Train workers")
    cpus_per_worker: int = option(1, help="CPUs per Ray Train worker")
    gpus_per_worker: float = option(0.0, help="GPUs per Ray Train worker")
    seed: int = option(0, help="seed of the initial weights and the sample stream")
    resume: bool = option(False, help="continue from the run's latest checkpoint")
    steps_per_epoch: int | None = option(None, help="global batches per epoch (default: the training area once over)")
    base_filters: int = option(16, help="filters of the first level (doubled per level)")
    depth: int = option(4, help="encoder levels; --tile must be divisible by 2**depth")
    dice: bool = option(False, help="add a soft Dice loss (foreground classes) to the cross-entropy")
    class_weights: tuple[float, ...] | None = option(
        None, help="per-class cross-entropy weights", metavar="W", parse=float, many=True
    )
    source_weights: tuple[float, ...] | None = option(
        None,
        help="share of samples drawn from each --images dir (default: by area)",
        metavar="W",
        parse=float,
        many=True,
    )
    precision: str = option("float32", help="training precision (the artifact is always float32)", choices=PRECISIONS)
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    max_failures: int = option(0, help="restarts from the latest checkpoint when a worker dies (-1: no limit)")
    storage_path: str | None = option(None, help="Ray Train storage (default: <out dir>/runs)", metavar="DIR")
    name: str | None = option(
        None, help="Ray Train run name, one folder under --storage-path (default: the output file's stem)"
    )
    normalise: str | None = option(
        None,
        help="input normalisation: 'dataset' (training-set band statistics) or 'tile' (each tile's own valid "
        "pixels); recorded in the artifact (default: dataset, or --init's)",
        choices=NORMALISATIONS,
    )
    aug_scale: float = option(1.0, help="scale augmentation: windows resampled by a factor in [1/S, S] (1 = off)")
    aug_blur: float = option(0.0, help="Gaussian blur augmentation: largest sigma in pixels (0 = off)")
    aug_noise: float = option(0.0, help="Gaussian noise augmentation: largest sigma, fraction of the range (0 = off)")
    aug_jpeg: int = option(0, help="JPEG-artefact augmentation: lowest quality 1..95 (0 = off)")
    aug_colour: float = option(0.0, help="colour augmentation: per-band gain, gamma and hue strength (0 = off)")
    aug_prob: float = option(0.5, help="probability that each augmentation is applied to a sample")
    init: str | None = option(
        None, help="start from this artifact's weights (architecture, classes, bands, normalisation from it)",
        metavar="MODEL.keras",
    )  # fmt: skip
    freeze_encoder_epochs: int = option(0, help="with --init: epochs during which the encoder is not trained")
    jitter: float = option(0.1, help="brightness/contrast jitter of the samples", cli=False)
    sync_bn: bool = option(True, help="BatchNorm statistics over the global batch when workers > 1", cli=False)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainOptions:
        """Options from a dict (e.g. parsed arguments); unknown keys are an error, lists become tuples."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(f"unknown training options: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def validate(self) -> None:
        """Check every option (and their combinations) at once, before any file is read or written."""
        self._check_shapes()
        self._check_lists()
        check(Path(self.out).suffix == ".keras", "--out", f"{self.out}: the output model must end in .keras")
        name = self.name
        check(
            name is None or (bool(name) and name not in (".", "..") and Path(name).name == name and "\\" not in name),
            "--name",
            f"{name!r} must be a plain folder name (no path separators, not '.' or '..')",
        )

    def _check_shapes(self) -> None:
        """Numbers: sizes, counts, rates."""
        check(self.depth >= 1, "--depth", f"must be >= 1, got {self.depth}")
        check(self.base_filters >= 1, "--base-filters", f"must be >= 1, got {self.base_filters}")
        check(
            self.tile > 0 and self.tile % 2**self.depth == 0,
            "--tile",
            f"{self.tile} must be a positive multiple of 2**depth = {2**self.depth}",
        )
        check(self.epochs >= 1, "--epochs", f"must be >= 1, got {self.epochs}")
        check(self.workers >= 1, "--workers", f"must be >= 1, got {self.workers}")
        check(
            self.batch_size >= 1 and self.batch_size % self.workers == 0,
            "--batch-size",
            f"{self.batch_size} (global) must be a positive multiple of workers {self.workers}",
        )
        check(self.lr > 0, "--lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "--weight-decay", f"must be >= 0, got {self.weight_decay}")
        check(0 < self.val_fraction < 1, "--val-fraction", f"must be in (0, 1), got {self.val_fraction}")
        check(self.cpus_per_worker >= 1, "--cpus-per-worker", f"must be >= 1, got {self.cpus_per_worker}")
        check(self.gpus_per_worker >= 0, "--gpus-per-worker", f"must be >= 0, got {self.gpus_per_worker}")
        steps = self.steps_per_epoch
        check(steps is None or steps >= 1, "--steps-per-epoch", f"must be >= 1, got {steps}")
        check(self.max_failures >= -1, "--max-failures", f"must be >= -1, got {self.max_failures}")
        check(self.jitter >= 0, "jitter", f"must be >= 0, got {self.jitter}")
        check(self.aug_scale >= 1, "--aug-scale", f"must be >= 1 (1 = off), got {self.aug_scale}")
        for flag, v in (
            ("--aug-blur", self.aug_blur),
            ("--aug-noise", self.aug_noise),
            ("--aug-colour", self.aug_colour),
        ):
            check(v >= 0, flag, f"must be >= 0, got {v}")
        check(self.aug_colour < 1, "--aug-colour", f"must be < 1, got {self.aug_colour}")
        check(self.aug_jpeg == 0 or 1 <= self.aug_jpeg <= 95, "--aug-jpeg", f"must be 0 or 1..95, got {self.aug_jpeg}")
        check(0 <= self.aug_prob <= 1, "--aug-prob", f"must be in [0, 1], got {self.aug_prob}")
        check(
            self.freeze_encoder_epochs >= 0,
            "--freeze-encoder-epochs",
            f"must be >= 0, got {self.freeze_encoder_epochs}",
        )
        check(
            self.freeze_encoder_epochs == 0 or self.init is not None,
            "--freeze-encoder-epochs",
            "needs --init (a fresh encoder has nothing worth freezing)",
        )
        check(self.init is None or Path(self.init).suffix == ".keras", "--init", f"{self.init}: not a .keras artifact")

    def _check_lists(self) -> None:
        """Lists: non-empty, one per dir where they pair up, classes that fit a mask."""
        check(len(self.images) > 0, "--images", "give at least one dir")
        k = len(self.classes)
        check(2 <= k <= MAX_CLASSES, "--classes", f"need 2..{MAX_CLASSES} class names, got {k}")
        check(len(set(self.classes)) == k, "--classes", f"names must be unique: {list(self.classes)}")
        for flag, dirs, of in (("--masks", self.masks, self.images), ("--val-masks", self.val_masks, self.val_images)):
            if dirs is not None and of is not None:
                check(len(dirs) == len(of), flag, f"{len(of)} images dir(s) but {len(dirs)} mask dir(s): one each")
        check(self.val_masks is None or self.val_images is not None, "--val-masks", "needs --val-images")
        if self.labels is not None:
            check(len(self.labels) == len(self.images), "--labels", f"{len(self.images)} images dir(s) but "
                  f"{len(self.labels)} label file(s): one each ('-' for a dir with masks)")  # fmt: skip
            check(any(v != "-" for v in self.labels), "--labels", "every entry is '-': give a label file")
            if self.masks is not None:
                both = [
                    i for i, (m, v) in enumerate(zip(self.masks, self.labels, strict=True)) if m != "-" and v != "-"
                ]
                check(not both, "--masks", f"--images dir {both[:1]} has both a mask dir and a label file: use '-'")
        elif self.masks is not None:
            check("-" not in self.masks, "--masks", "'-' is for dirs labelled by --labels, and no --labels is given")
        check(self.aoi is None or self.labels is not None, "--aoi", "needs --labels")
        if self.aoi is not None and self.labels is not None:
            check(
                len(self.aoi) == len(self.labels),
                "--aoi",
                f"one per --labels entry ('-' for none), got {len(self.aoi)}",
            )
        check(self.label_field is None or self.labels is not None, "--label-field", "needs --labels")
        check(self.bands is None or (len(self.bands) > 0 and min(self.bands) >= 1), "--bands", "1-based band numbers")
        weights = self.class_weights
        check(
            weights is None or (len(weights) == k and min(weights) >= 0),
            "--class-weights",
            f"need {k} non-negative weights (one per class), got {weights}",
        )
        shares = self.source_weights
        check(
            shares is None or (len(shares) == len(self.images) and min(shares) > 0),
            "--source-weights",
            f"need {len(self.images)} positive weights (one per --images dir), got {shares}",
        )


TrainConfig = TrainOptions  # the name used before the options became one frozen, validated dataclass
