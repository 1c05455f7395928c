"""Training for cities a model has never seen: vector labels in the sampler, robust augmentations, per-tile
normalisation through the artifact and inference, --init fine-tuning, and the training GSD in the artifact.

Real data (Kathmandu's EPSG:3857 imagery with CRS84 polygons, Kampala chips) and tiny real Keras models.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import rasterio.features

from tileseg.artifact import ModelMeta, normalise_tiles, read_metadata
from tileseg.augment import Augment, photometric
from tileseg.data import TileSampler, find_pairs
from tileseg.errors import OptionError
from tileseg.mask import NODATA
from tileseg.train import Trainer, TrainOptions, prepare
from tileseg.train.plan import gsd_stats, median_gsd

TINY = dict(arch="unet", tile=32, base_filters=4, depth=2, batch_size=4, steps_per_epoch=3, epochs=1)


def western_aoi(data_dir, tmp_path):
    """Kathmandu's AOI cut by a meridian through its images: many tiles straddle this AOI's edge."""
    import geopandas as gpd
    import shapely
    from rasterio.warp import transform_bounds

    aoi = gpd.read_file(data_dir / "kathmandu" / "aoi.geojson")
    west, south, east, north = aoi.total_bounds
    centres = []
    for image in sorted((data_dir / "kathmandu" / "images").glob("*.tif")):
        with rasterio.open(image) as ds:
            w, s, e, n = transform_bounds(ds.crs, "OGC:CRS84", *ds.bounds)
        if west < (w + e) / 2 < east and south < (s + n) / 2 < north:
            centres.append((w + e) / 2)
    meridian = sorted(centres)[len(centres) // 2]  # through the middle of a tile
    cut = shapely.box(west - 1, south - 1, meridian, north + 1)
    path = tmp_path / "west_aoi.geojson"
    gpd.GeoDataFrame(geometry=[shapely.intersection(aoi.union_all(), cut)], crs=aoi.crs).to_file(path)
    return path


def kathmandu_options(data_dir, tmp_path, aoi=None, **kw) -> TrainOptions:
    k = data_dir / "kathmandu"
    return TrainOptions(
        images=(str(k / "images"),),
        labels=(str(k / "buildings.geojson"),),
        aoi=(str(aoi or k / "aoi.geojson"),),
        label_field="class",
        out=str(tmp_path / "m.keras"),
        **{**TINY, **kw},
    )


def rasterise_beforehand(data_dir, pairs, root, aoi_path=None):
    """Masks of `pairs`' images rasterised independently (geopandas + rasterio.features), 255 outside the AOI,
    beside links to the images: the mask-based twin of the vector-labelled source."""
    import geopandas as gpd

    k = data_dir / "kathmandu"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    frame, aoi = gpd.read_file(k / "buildings.geojson"), gpd.read_file(aoi_path or k / "aoi.geojson")
    for pair in pairs:
        with rasterio.open(pair.image) as ds:
            polys = frame.to_crs(ds.crs).geometry
            mask = rasterio.features.rasterize(
                [(g, 1) for g in polys], out_shape=ds.shape, transform=ds.transform, fill=0, dtype="uint8"
            )
            inside = rasterio.features.geometry_mask(
                aoi.to_crs(ds.crs).geometry, out_shape=ds.shape, transform=ds.transform, invert=True
            )
            profile = dict(ds.profile, count=1, dtype="uint8", nodata=None)
        os.symlink(pair.image, root / "images" / pair.image.name)
        with rasterio.open(root / "masks" / pair.image.name, "w", **profile) as dst:
            dst.write(np.where(inside, mask, NODATA).astype("uint8"), 1)
    return find_pairs(root)


def _sampler(pairs, plan, **kw):
    return TileSampler(
        pairs, tile=kw.pop("tile", 128), bands=list(plan.bands), mean=list(plan.mean), std=list(plan.std),
        num_classes=2, seed=3, **kw,
    )  # fmt: skip


def test_vector_label_samples_equal_masks_rasterised_beforehand(data_dir, tmp_path):
    every = prepare(kathmandu_options(data_dir, tmp_path)).train_pairs
    assert 100 <= len(every) < 135 * 0.9  # images outside the AOI are left out (and a tenth for validation)
    aoi = western_aoi(data_dir, tmp_path)
    plan = prepare(kathmandu_options(data_dir, tmp_path, aoi=aoi))
    vector = [p for p in plan.train_pairs if p.labels is not None]
    assert len(vector) == len(plan.train_pairs) < len(every)
    # a few images: the richest in buildings and some cut by the AOI's edge
    rich, cut = [], []
    for pair in vector:
        _, labels, weights = _sampler([pair], plan, augment=False, tile=256, min_valid=0.0).sample(0, 0)
        (cut if weights.mean() < 0.95 else rich if (labels == 1).sum() > 2000 else []).append(pair)
    chosen = sorted(rich[:4] + cut[:4], key=lambda p: p.image.name)
    assert len(rich) >= 2 and len(cut) >= 2
    masked = rasterise_beforehand(data_dir, chosen, tmp_path / "ref", aoi)
    assert [p.image.name for p in masked] == [p.image.name for p in chosen]
    aug = Augment(scale=2.0, prob=0.7)
    a = _sampler(chosen, plan, augmentations=aug, min_valid=0.3, tile=256)
    b = _sampler(masked, plan, augmentations=aug, min_valid=0.3, tile=256)
    outside = 0
    for i in range(24):
        xa, la, wa = a.sample(1, i)
        xb, lb, wb = b.sample(1, i)
        np.testing.assert_array_equal(xa, xb)  # same window, same pixels
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(wa, wb)
        outside += int((wa == 0).sum())
    assert outside > 0  # windows reaching outside the AOI (or the image) weigh 0 there


def test_pixels_outside_the_aoi_weigh_zero(data_dir, tmp_path):
    aoi = western_aoi(data_dir, tmp_path)
    plan = prepare(kathmandu_options(data_dir, tmp_path, aoi=aoi))
    cut = None
    for pair in plan.train_pairs:
        s1 = _sampler([pair], plan, augment=False, tile=256, min_valid=0.0)
        _, labels, weights = s1.sample(0, 0)
        if 0.05 < weights.mean() < 0.95:
            cut = pair
            break
    assert cut is not None, "some Kathmandu tile must straddle the AOI's edge"
    ref = rasterise_beforehand(data_dir, [cut], tmp_path / "ref", aoi)[0]
    with rasterio.open(ref.mask) as ds:
        truth = ds.read(1)
    _, labels, weights = _sampler([cut], plan, augment=False, tile=256, min_valid=0.0).sample(0, 0)
    np.testing.assert_array_equal(weights == 0, truth == NODATA)
    np.testing.assert_array_equal(labels[truth != NODATA], truth[truth != NODATA])


def test_label_options_are_checked_and_mixed_sources_train(data_dir, tmp_path):
    k = data_dir / "kathmandu"
    with pytest.raises(OptionError, match="--labels"):
        TrainOptions(images=("a", "b"), labels=(str(k / "buildings.geojson"),), out="m.keras")
    with pytest.raises(OptionError, match="--aoi"):
        TrainOptions(images=("a",), aoi=("x",), out="m.keras")
    with pytest.raises(OptionError, match="--freeze-encoder-epochs"):
        TrainOptions(images=("a",), out="m.keras", freeze_encoder_epochs=1)
    options = TrainOptions(
        images=(str(data_dir / "kampala" / "train"), str(k / "images")),
        labels=("-", str(k / "buildings.geojson")),
        aoi=("-", str(k / "aoi.geojson")),
        label_field="class",
        out=str(tmp_path / "m.keras"),
        **TINY,
    )
    plan = prepare(options)
    kinds = {p.labels is None for p in plan.train_pairs}
    assert kinds == {True, False}  # masks and vector labels in one run
    trainer = Trainer(plan)
    assert np.isfinite(trainer.train_epoch(0))
    assert 0 <= trainer.validate()["val_miou"] <= 1


# --- augmentations ---------------------------------------------------------------------------------


def _pattern(size=256):
    """A synthetic image whose red band is the label: squares of 255 on 0, with green/blue texture."""
    yy, xx = np.mgrid[:size, :size]
    labels = (((yy // 24) + (xx // 40)) % 2).astype(np.uint8)
    image = np.stack([labels * 255, (xx * 255 // size), (yy * 255 // size)], axis=-1).astype(np.uint8)
    return image, labels


def test_each_augmentation_keeps_shape_dtype_and_is_deterministic():
    image, _ = _pattern(64)
    x = image.astype(np.float32)
    valid = np.ones(x.shape[:2], bool)
    valid[:5] = False
    for name, value in (("colour", 0.3), ("blur", 2.0), ("noise", 0.05), ("jpeg", 20)):
        aug = Augment(prob=1.0, **{name: value})
        y1 = photometric(x, valid, np.random.default_rng([1, 2, 3]), aug, 255.0)
        y2 = photometric(x, valid, np.random.default_rng([1, 2, 3]), aug, 255.0)
        y3 = photometric(x, valid, np.random.default_rng([1, 2, 4]), aug, 255.0)
        assert y1.shape == x.shape and y1.dtype == np.float32, name
        np.testing.assert_array_equal(y1, y2, err_msg=name)
        assert not np.array_equal(y1, x) and not np.array_equal(y1, y3), name
        np.testing.assert_array_equal(y1[~valid], x[~valid], err_msg=name)  # invalid pixels untouched
    off = photometric(x, valid, np.random.default_rng(0), Augment(colour=0.3, prob=0.0), 255.0)
    np.testing.assert_array_equal(off, x)


def test_sampler_with_every_augmentation_is_deterministic_and_labels_stay_aligned(tmp_path):
    from tests.test_data import make_pair

    image, labels = _pattern(100)  # zoomed-out windows (up to 128 px) reach past this raster
    make_pair(tmp_path, "p", image, labels)
    pairs = find_pairs(tmp_path)
    mean, std = [127.5, 127.5, 127.5], [127.5, 127.5, 127.5]

    def sampler(aug, seed=5):
        return TileSampler(pairs, tile=64, bands=None, mean=mean, std=std, num_classes=2, seed=seed,
                           augmentations=aug, jitter=0.0)  # fmt: skip

    full = Augment(scale=2.0, blur=1.5, noise=0.03, jpeg=30, colour=0.2, prob=0.8)
    a, b, c = sampler(full), sampler(full), sampler(full, seed=6)
    for i in range(6):
        xa, la, wa = a.sample(2, i)
        xb, lb, wb = b.sample(2, i)
        assert xa.shape == (64, 64, 3) and xa.dtype == np.float32 and la.dtype == np.int32 and wa.dtype == np.float32
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.sample(2, 0)[0], c.sample(2, 0)[0])
    # scale + D4 only: the red band still says the label at (nearly) every labelled pixel, at every zoom
    scale_only = sampler(Augment(scale=2.0, prob=1.0))
    agree, zooms = [], set()
    for i in range(40):
        x, lab, w = scale_only.sample(0, i)
        keep = w > 0
        red = x[..., 0] > 0  # normalised: 255 -> +1, 0 -> -1
        agree.append((red[keep] == (lab[keep] == 1)).mean())
        zooms.add(round(float(keep.mean()), 2))
    assert min(agree) > 0.9 and np.mean(agree) > 0.96  # misaligned labels would agree about half the time
    assert len(zooms) > 3  # zoomed-out windows (partly past the raster) happened


# --- per-tile normalisation ------------------------------------------------------------------------


def test_per_tile_normalisation_ignores_invalid_pixels():
    rng = np.random.default_rng(0)
    tiles = rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    valid = np.ones((2, 16, 16), bool)
    valid[0, :4] = False
    with_nan = tiles.copy()
    with_nan[~valid] = np.nan
    a = normalise_tiles(with_nan)
    b = normalise_tiles(tiles, valid)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.all(a[~valid] == 0)
    v = a[0][valid[0]]
    np.testing.assert_allclose(v.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(v.std(axis=0), 1, atol=1e-3)
    tiles[0][~valid[0]] = 10_000  # whatever sits under invalid pixels changes nothing
    np.testing.assert_allclose(normalise_tiles(tiles, valid), b, atol=1e-5)


def test_tile_normalisation_round_trips_through_the_artifact_and_inference(tmp_path, tiny_model_path):
    import keras

    from tileseg.model import build_model, load_model, save_model
    from tileseg.predict import TilePredictor

    old = read_metadata(tiny_model_path)
    assert old.normalisation == "dataset" and old.gsd is None  # artifacts from before load as before
    keras.utils.set_random_seed(1)
    model = build_model("unet", num_classes=2, bands=3, base_filters=4, depth=2)
    meta = ModelMeta(
        classes=("background", "building"), bands=(1, 2, 3), mean=(120.0,) * 3, std=(50.0,) * 3, tile=32,
        arch="unet", base_filters=4, depth=2, normalisation="tile", gsd=0.3,
    )  # fmt: skip
    path = save_model(model, tmp_path / "tile.keras", meta)
    back = read_metadata(path)
    assert back.normalisation == "tile" and back.gsd == pytest.approx(0.3) and "gsd" not in back.extra
    assert np.isnan(back.fill).all()  # stitching marks invalid pixels NaN, left out of the tile's statistics
    tiles = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    predictor = TilePredictor(path, batch_size=4, threads=1)
    probs = predictor(tiles)
    loaded, _ = load_model(path)
    expected = loaded(normalise_tiles(tiles, None, back.min_std), training=False).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # a brighter, higher-contrast city looks the same to a per-tile-normalised model
    np.testing.assert_allclose(predictor(tiles * 1.3 + 25), probs, atol=1e-4)
    # invalid pixels (NaN fill) do not change what the valid ones see
    holes = tiles.copy()
    holes[:, :8] = np.nan
    part = normalise_tiles(holes, None, back.min_std)
    np.testing.assert_allclose(part[:, 8:], normalise_tiles(tiles[:, 8:], None, back.min_std), atol=1e-5)
    assert np.isfinite(predictor(holes)).all()


# --- fine-tuning, GSD ------------------------------------------------------------------------------


def test_init_loads_weights_lowers_the_first_loss_and_freezes_the_encoder(data_dir, tmp_path):
    from tileseg.model import save_model
    from tileseg.train.checkpoint import TrainState
    from tileseg.train.export import model_meta

    images = (str(data_dir / "kampala" / "train"),)
    base = TrainOptions(images=images, out=str(tmp_path / "a.keras"), **{**TINY, "steps_per_epoch": 40, "lr": 1e-2})
    plan = prepare(base)
    first = Trainer(plan)
    first.train_epoch(0)
    state = TrainState()
    state.best = {"score": 0.0, "epoch": 1, "metrics": {}}
    path = save_model(first.model, tmp_path / "a.keras", model_meta(plan, state, 1.0))

    init = TrainOptions(images=images, out=str(tmp_path / "b.keras"), init=str(path), freeze_encoder_epochs=1,
                        **{**TINY, "seed": 9})  # fmt: skip
    tuned = Trainer(prepare(init))
    for a, b in zip(tuned.model.get_weights(), first.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # weights equal before the first step
    scratch = Trainer(prepare(TrainOptions(images=images, out=str(tmp_path / "c.keras"), **{**TINY, "seed": 9})))
    x, labels, weights = tuned.sampler.batch(0, range(4))
    encoder = {v.path: v.numpy() for v in tuned.model.trainable_variables if v.path.startswith(("enc", "bottleneck"))}
    decoder = {v.path: v.numpy() for v in tuned.model.trainable_variables if v.path.startswith("dec")}
    assert encoder and decoder
    loss_tuned = float(tuned._frozen_step(x, labels, weights))
    loss_scratch = float(scratch._step(x, labels, weights))
    assert loss_tuned < loss_scratch
    for v in tuned.model.trainable_variables:  # a frozen step moves the decoder only
        if v.path in encoder:
            np.testing.assert_array_equal(v.numpy(), encoder[v.path])
    moved = [
        not np.array_equal(v.numpy(), decoder[v.path]) for v in tuned.model.trainable_variables if v.path in decoder
    ]
    assert any(moved)
    with pytest.raises(OptionError, match="--base-filters"):
        options = TrainOptions(
            images=images, out=str(tmp_path / "d.keras"), init=str(path), **{**TINY, "base_filters": 8}
        )
        prepare(options)


def test_gsd_of_the_training_data_is_recorded(data_dir, tmp_path):
    from tileseg.raster import open_info
    from tileseg.train.checkpoint import TrainState
    from tileseg.train.export import model_meta

    plan = prepare(TrainOptions(images=(str(data_dir / "kampala" / "train"),), out=str(tmp_path / "m.keras"), **TINY))
    gsds = [open_info(p.image).gsd for p in plan.train_pairs]  # 118 chips, < 100 per source: all
    expected = np.percentile(gsds, [2, 50, 98])
    assert (plan.gsd.low, plan.gsd.median, plan.gsd.high) == pytest.approx(tuple(expected))
    assert 0.02 < plan.gsd.median < 0.5 and plan.gsd.high > 2 * plan.gsd.low  # zoom 19..21 chips: a range
    state = TrainState()
    state.best = {"score": 0.0, "epoch": 1, "metrics": {}}
    meta = ModelMeta.from_dict(model_meta(plan, state, 1.0).to_dict())
    assert meta.gsd == pytest.approx(expected[1]) and meta.gsd_range == pytest.approx((expected[0], expected[2]))
    assert meta.gsd_span == meta.gsd_range and meta.training["gsd_range"] == pytest.approx(list(meta.gsd_range))
    # PNG chips without a CRS take their georeferenced mask's; no georeferencing at all: None
    zanzibar = find_pairs(data_dir / "zanzibar")[:20]
    assert open_info(zanzibar[0].image).gsd is None and median_gsd(zanzibar) > 0
    bare = [type(p)(p.image, None, p.height, p.width) for p in zanzibar]
    assert median_gsd(bare) is None and gsd_stats([bare]) is None
    # each source is sampled on its own: a small source's GSDs are in the range beside a large one's
    coarse = [p for p in find_pairs(data_dir / "kampala" / "train") if open_info(p.image).gsd > 0.2]
    fine = find_pairs(data_dir / "zanzibar")[:300]
    assert gsd_stats([fine, coarse], per_source=100).high > 0.2


@pytest.mark.slow
def test_cli_trains_on_polygons_with_augmentations_and_records_the_recipe(data_dir, tmp_path):
    """`tileseg train --images kathmandu/images --labels ... --aoi ...` on Ray Train, end to end (~40 s)."""
    from tileseg.cli import main

    k = data_dir / "kathmandu"
    out = tmp_path / "m.keras"
    argv = ["train", "--images", str(k / "images"), "--labels", str(k / "buildings.geojson"),
            "--aoi", str(k / "aoi.geojson"), "--label-field", "class", "--out", str(out), "--normalise", "tile",
            "--aug-scale", "2", "--aug-blur", "1", "--aug-noise", "0.02", "--aug-jpeg", "40", "--aug-colour", "0.2",
            "--arch", "unet", "--tile", "32", "--base-filters", "4", "--depth", "2", "--batch-size", "4",
            "--epochs", "1", "--steps-per-epoch", "2"]  # fmt: skip
    assert main(argv) == 0
    meta = read_metadata(out)
    assert meta.normalisation == "tile" and 0.01 < meta.gsd < 1
    t = meta.training
    assert t["labels"] == [str(k / "buildings.geojson")] and t["normalisation"] == "tile" and t["gsd"] == meta.gsd
    settings = t["settings"]
    assert (settings["aug_scale"], settings["aug_jpeg"], settings["aug_colour"]) == (2.0, 40, 0.2)
