"""Training reads its images, masks and vector labels from object storage (the local S3 server) exactly
as from disk: the same pairs, the same statistics, a finite loss."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from s3server import SECRET_KEY

from tileseg.errors import DataError
from tileseg.train import Trainer, TrainOptions, prepare

TINY = dict(arch="unet", tile=32, base_filters=4, depth=2, batch_size=4, steps_per_epoch=2, epochs=1)
CLASSES = ("background", "building")


def _chips(data_dir: Path, tmp_path: Path, n: int = 4) -> Path:
    """A local data dir with `n` Kampala chips (images/ and masks/)."""
    src = data_dir / "kampala" / "train"
    local = tmp_path / "chips"
    for kind in ("images", "masks"):
        (local / kind).mkdir(parents=True)
        for path in sorted((src / kind).glob("*.tif"))[:n]:
            shutil.copy(path, local / kind / path.name)
    return local


def _upload_dir(s3_server, local: Path, url: str) -> str:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3_server.upload(path, f"{url}/{path.relative_to(local).as_posix()}")
    return url


def _names(pairs) -> list[tuple[str, str | None]]:
    return [(Path(str(p.image)).name, None if p.mask is None else Path(str(p.mask)).name) for p in pairs]


@pytest.mark.slow  # ~30 s on the 2-core machine: a tiny U-Net's epoch, and the S3 server's many small reads
def test_training_reads_images_masks_and_labels_from_the_bucket(s3_server, data_dir, tmp_path):
    local = _chips(data_dir, tmp_path)
    bucket = s3_server.bucket("train-in")
    remote = _upload_dir(s3_server, local, f"{bucket}/kampala")
    out = str(tmp_path / "m.keras")
    common = dict(classes=CLASSES, out=out, val_fraction=0.25, **TINY)

    on_disk = prepare(TrainOptions(images=(str(local / "images"),), masks=(str(local / "masks"),), **common))
    split = prepare(TrainOptions(images=(f"{remote}/images",), masks=(f"{remote}/masks/",), **common))
    data_dir_form = prepare(TrainOptions(images=(remote,), **common))  # a data dir with images/ and masks/
    for plan in (split, data_dir_form):
        assert all(str(p.image).startswith(f"{remote}/images/") for p in plan.train_pairs + plan.val_pairs)
        assert _names(plan.train_pairs) == _names(on_disk.train_pairs)
        assert _names(plan.val_pairs) == _names(on_disk.val_pairs)
        assert (plan.mean, plan.std, plan.class_frequency) == (on_disk.mean, on_disk.std, on_disk.class_frequency)
    assert split.train_dirs == (f"{remote}/images",)
    assert np.isfinite(Trainer(split).train_epoch(0))

    # Vector labels (GeoJSON) and their images in the bucket
    k = data_dir / "kathmandu"
    images = sorted((k / "images").glob("*.tif"))[:3]
    for path in images:
        s3_server.upload(path, f"{bucket}/kathmandu/images/{path.name}")
    labels = s3_server.upload(k / "buildings.geojson", f"{bucket}/kathmandu/buildings.geojson")
    vector = prepare(TrainOptions(images=(f"{bucket}/kathmandu",), labels=(labels,), label_field="class", **common))
    pairs = vector.train_pairs + vector.val_pairs
    assert pairs and all(p.labels is not None and p.labels.path == labels for p in pairs)
    assert np.isfinite(Trainer(vector).train_epoch(0))


def test_a_missing_prefix_or_bucket_is_one_line_naming_it(s3_server, tmp_path):
    bucket = s3_server.bucket("train-in")
    for images in (f"{bucket}/nothing-here", "s3://no-such-bucket-tileseg/data"):
        with pytest.raises(DataError) as err:
            prepare(TrainOptions(images=(images,), classes=CLASSES, out=str(tmp_path / "m.keras"), **TINY))
        text = str(err.value)
        assert images in text and "\n" not in text and SECRET_KEY not in text
