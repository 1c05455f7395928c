"""`tileseg train`'s options: one frozen dataclass from which the CLI, jobs/train.py and the Python API come.

Every option is declared once with `tileseg.options.option` (default, help, flag); `validate` checks them
all, before anything is read or written, and raises OptionError naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tileseg.artifact import ARCHS
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
    masks: tuple[str, ...] | None = option(None, help="mask dirs, one per --images dir", metavar="DIR", many=True)
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
