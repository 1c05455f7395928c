"""Training data: pairing by stem, clear errors, random windows of any raster size, D4, nodata, statistics."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tileseg.data import (
    DataError,
    TileSampler,
    band_statistics,
    d4,
    find_pairs,
    shard_indices,
    split_pairs,
    validation_tiles,
)


def write_tif(path: Path, array: np.ndarray, nodata=None) -> Path:
    """A small GeoTIFF from (h, w) or (h, w, C) array."""
    data = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": "EPSG:3857",
        "transform": Affine(1.0, 0.0, 1000.0, 0.0, -1.0, 2000.0),
    }
    if nodata is not None:
        profile["nodata"] = nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def make_pair(
    root: Path, stem: str, image: np.ndarray, mask: np.ndarray, *, image_nodata=None, mask_nodata=None
) -> None:
    write_tif(root / "images" / f"{stem}.tif", image, image_nodata)
    write_tif(root / "masks" / f"{stem}.tif", mask, mask_nodata)


def sampler(pairs, tile, **kw):
    kw.setdefault("mean", [0.0] * 3)
    kw.setdefault("std", [1.0] * 3)
    return TileSampler(pairs, tile=tile, bands=None, num_classes=kw.pop("num_classes", 2), seed=7, **kw)


def test_real_pairs_match_by_stem_across_formats(data_dir):
    kampala = find_pairs(data_dir / "kampala" / "train")
    assert len(kampala) == 118 and all(p.image.stem == p.mask.stem for p in kampala)
    zanzibar = find_pairs(data_dir / "zanzibar" / "images", data_dir / "zanzibar" / "masks")
    assert len(zanzibar) == 966
    assert {p.image.suffix for p in zanzibar} == {".png"} and {p.mask.suffix for p in zanzibar} == {".tif"}
    # PNG chips without georeferencing sample like GeoTIFFs; mask values are class indices 0/1
    x, labels, weights = sampler(zanzibar[:20], 64).batch(0, range(6))
    assert x.shape == (6, 64, 64, 3) and x.dtype == np.float32
    assert set(np.unique(labels)) <= {0, 1} and weights.min() == 1.0


def test_orphan_images_reported_and_bad_files_named(tmp_path):
    rng = np.random.default_rng(0)
    make_pair(tmp_path, "a", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), np.zeros((40, 40), np.uint8))
    write_tif(tmp_path / "images" / "lonely.tif", np.zeros((40, 40, 3), np.uint8))
    with pytest.warns(UserWarning, match="lonely.tif"):
        pairs = find_pairs(tmp_path)
    assert [p.image.name for p in pairs] == ["a.tif"]
    with pytest.raises(DataError, match="lonely.tif"):
        find_pairs(tmp_path, strict=True)

    write_tif(tmp_path / "masks" / "lonely.tif", np.zeros((30, 40), np.uint8))  # wrong size
    with pytest.raises(DataError, match=r"lonely\.tif.*30x40.*40x40"):
        find_pairs(tmp_path)
    (tmp_path / "masks" / "lonely.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match="lonely.tif"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match="images/ and masks/"):
        find_pairs(tmp_path / "images")


def test_windows_at_random_offsets_of_a_big_raster_and_chip_equals_tile(tmp_path):
    h, w = 300, 500
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.stack([rows, cols, rows * 0], axis=-1).astype(np.uint16)  # pixel value = its position
    make_pair(tmp_path / "big", "scene", image, (rows % 2).astype(np.uint8))
    pairs = find_pairs(tmp_path / "big")
    s = sampler(pairs, 64, augment=False)
    origins = set()
    for i in range(40):
        x, labels, _ = s.sample(0, i)
        r0, c0 = int(x[0, 0, 0]), int(x[0, 0, 1])
        assert np.array_equal(x[..., 0], rows[r0 : r0 + 64, c0 : c0 + 64])  # a true window, not resized
        assert np.array_equal(labels, (rows[r0 : r0 + 64, c0 : c0 + 64] % 2))
        origins.add((r0, c0))
    assert len(origins) > 30  # random offsets over the whole raster
    assert max(r for r, _ in origins) > 150 and max(c for _, c in origins) > 300

    chip = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    make_pair(tmp_path / "chip", "c", chip, np.ones((64, 64), np.uint8))
    x, labels, weights = sampler(find_pairs(tmp_path / "chip"), 64, augment=False).sample(0, 0)
    assert np.array_equal(x, chip.astype(np.float32)) and labels.min() == 1 and weights.min() == 1


def test_nodata_and_ignore_get_zero_weight_and_mostly_invalid_windows_are_skipped(tmp_path):
    h, w = 128, 256
    image = np.full((h, w, 3), 100, np.uint8)
    image[:, :170] = 0  # nodata: 2/3 of the raster
    mask = np.ones((h, w), np.uint8)
    mask[:, 200:210] = 255  # unlabelled stripe
    make_pair(tmp_path, "n", image, mask, image_nodata=0)
    s = sampler(find_pairs(tmp_path), 64, augment=False, min_valid=0.5, tries=50)
    for i in range(20):
        x, labels, weights = s.sample(0, i)
        assert weights.mean() >= 0.5  # windows mostly in the nodata part were redrawn
        # nodata pixels are 0 (the mean, as inference fills them); valid but unlabelled pixels keep their
        # values: the model sees at training what it sees at inference, only the loss ignores them
        assert np.all(x[weights > 0] == 100) and np.all(x[weights == 0] != 50)
        assert np.all((x[..., 0] == 0) | (x[..., 0] == 100))
    # every pixel of the raster through the validation tiling: nodata and 255 weigh 0, the rest 1
    tiles = list(validation_tiles(find_pairs(tmp_path), tile=64, bands=None, mean=[0] * 3, std=[1] * 3, num_classes=2))
    total = sum(t[2].sum() for t in tiles)
    assert total == (h * (w - 170)) - h * 10


def test_validation_tiles_count_every_pixel_once(tmp_path):
    h, w = 70, 50  # not multiples of the tile: the snapped edge tiles overlap their neighbours
    labels = np.random.default_rng(2).integers(0, 3, (h, w)).astype(np.uint8)
    make_pair(tmp_path, "v", np.zeros((h, w, 3), np.uint8), labels)
    tiles = list(validation_tiles(find_pairs(tmp_path), tile=32, bands=None, mean=[0] * 3, std=[1] * 3, num_classes=3))
    assert len(tiles) == 3 * 2
    weighted = np.zeros(3)
    for _, lab, wt in tiles:
        weighted += np.bincount(lab.ravel(), weights=wt.ravel(), minlength=3)
    assert np.array_equal(weighted, np.bincount(labels.ravel(), minlength=3))


def test_d4_is_the_eight_symmetries_and_keeps_image_and_mask_aligned(tmp_path):
    a = np.arange(12).reshape(3, 4)
    images = {d4(a, k).tobytes() + bytes(d4(a, k).shape) for k in range(8)}
    assert len(images) == 8
    labels = np.random.default_rng(3).integers(0, 2, (64, 64)).astype(np.uint8)
    image = np.repeat(labels[..., None] * 200, 3, axis=-1).astype(np.uint8)  # image = mask, visibly
    make_pair(tmp_path, "d", image, labels)
    s = sampler(find_pairs(tmp_path), 64, jitter=0.0)
    seen = set()
    for i in range(40):
        x, lab, _ = s.sample(0, i)
        assert np.array_equal(x[..., 0] > 100, lab == 1)
        seen.add(lab.tobytes())
    assert len(seen) == 8


def test_sample_stream_is_deterministic_and_sharded_without_overlap(data_dir):
    pairs = find_pairs(data_dir / "kampala" / "val")
    a = sampler(pairs, 64).sample(3, 17)
    b = sampler(pairs, 64).sample(3, 17)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not np.array_equal(a[0], sampler(pairs, 64).sample(4, 17)[0])  # another epoch, another sample
    shards = [list(shard_indices(5, 8, r, 4)) for r in range(4)]
    assert sum(shards, []) == list(range(40, 48))
    with pytest.raises(ValueError):
        shard_indices(0, 6, 0, 4)
    train, val = split_pairs(pairs, 0.2, seed=0)
    assert len(val) == 6 and not {p.image for p in train} & {p.image for p in val}


def test_statistics_over_valid_labelled_pixels(tmp_path):
    rng = np.random.default_rng(4)
    image = rng.integers(1, 250, (60, 80, 3)).astype(np.uint8)
    image[:10] = 0  # nodata rows
    mask = rng.integers(0, 2, (60, 80)).astype(np.uint8)
    mask[-5:] = 255  # unlabelled rows
    make_pair(tmp_path, "s", image, mask, image_nodata=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = band_statistics(find_pairs(tmp_path), None, 2)
    used = image[10:-5].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], used.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], used.std(axis=0), rtol=1e-9)
    assert stats["class_frequency"][1] == pytest.approx(mask[10:-5].mean())


def test_validation_tiles_whole_read_equals_per_tile_reads(tmp_path):
    rng = np.random.default_rng(5)
    make_pair(
        tmp_path, "w", rng.integers(0, 255, (45, 70, 3)).astype(np.uint8), rng.integers(0, 2, (45, 70)).astype(np.uint8)
    )
    kw = {"tile": 32, "bands": None, "mean": [1.0] * 3, "std": [2.0] * 3, "num_classes": 2}
    whole = list(validation_tiles(find_pairs(tmp_path), **kw))
    tiled = list(validation_tiles(find_pairs(tmp_path), whole_read_pixels=0, **kw))
    assert len(whole) == len(tiled) == 6
    for a, b in zip(whole, tiled, strict=True):
        assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
