"""The segmentation job end to end on a real (embedded) Ray, real GeoTIFFs and real Zarr stores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from tileseg import device, raster, store
from tileseg.errors import StoreError
from tileseg.grid import TileGrid, Window
from tileseg.predict import TilePredictor, to_mask
from tileseg.segment import Compute, SegmentOptions, pool_size, segment
from tileseg.segment.pipeline import NodeResources, PoolSize, size_pool
from tileseg.stitch import predict_array

REPO = Path(__file__).resolve().parents[1]


def _scene(data_dir: Path) -> Path:
    return data_dir / "kampala" / "scene" / "kampala_z21_image.tif"


def test_job_equals_in_memory_prediction_on_the_kampala_scene(ray_local, data_dir, tiny_model_path, tmp_path):
    """Several blocks and 2 actors give exactly what one whole-image pass in memory gives."""
    scene = _scene(data_dir)
    out = tmp_path / "scene.zarr"
    summary = segment(
        SegmentOptions(
            inputs=[str(scene)],
            out=out,
            model=tiny_model_path,
            block=1024,
            chunk=512,
            actors=2,
            probabilities=True,
            progress=False,
        )
    )
    assert summary.ok, summary
    report = summary.images[0]
    assert report.status == "done" and report.blocks == 6 and report.error is None
    assert report.warning is None  # uint8 imagery, 8-bit model

    info = raster.open_info(str(scene))
    pixels, valid = raster.read_window(str(scene), Window(0, 0, info.height, info.width))
    predictor = TilePredictor(tiny_model_path, batch_size=16)
    probs = predict_array(pixels, predictor, tile=256, overlap=64, blend="gaussian", valid=valid, fill=predictor.fill)
    expected = to_mask(probs, valid)

    group = zarr.open_group(str(out), mode="r")[report.group]
    np.testing.assert_array_equal(group["mask"][:], expected)
    np.testing.assert_allclose(group["probability"][:], np.moveaxis(probs, -1, 0), atol=1e-5)
    assert group.attrs["complete"] is True
    on_disk = json.loads((out / ".tileseg" / "summary.json").read_text())
    assert on_disk["images"][0]["tiles_run"] == report.tiles_run > 0
    phases = summary.phases
    assert phases.plan > 0 and phases.startup > 0 and phases.run > 0 and phases.shutdown > 0
    assert phases.plan + phases.startup + phases.run + phases.shutdown <= summary.seconds + 0.5
    assert on_disk["phases"] == {"plan": phases.plan, "startup": phases.startup, "run": phases.run,
                                 "shutdown": phases.shutdown}  # fmt: skip
    path = "device" if device.wanted() else "numpy"  # numpy on CPU, unless TILESEG_DEVICE_PATH=on
    precision = device.precision() if path == "device" else "float32"
    assert summary.compute == Compute(paths=(path,), precisions=(precision,))
    assert on_disk["compute"] == {"paths": [path], "precisions": list(summary.compute.precisions)}


def test_uint16_with_alpha_and_reordered_bands(ray_local, data_dir, tiny_model_path, tmp_path):
    """A uint16 RGBA file through the job: bands 3,2,1 in that order, alpha as the valid mask, several blocks,
    probabilities stored as uint8, all equal to the same prediction in memory."""
    src = str(data_dir / "rasterio" / "RGBA.uint16.tif")
    out = tmp_path / "uint16.zarr"
    summary = segment(
        inputs=[src], out=out, model=tiny_model_path, bands=(3, 2, 1), block=512, chunk=256, probabilities=True,
        probability_dtype="uint8", progress=False,
    )  # fmt: skip
    assert summary.ok, summary
    report = summary.images[0]
    assert report.blocks == 2 and report.tiles_skipped >= 0
    assert "uint16 pixels" in report.warning  # values up to 10000, the model's normalisation is 8-bit

    info = raster.open_info(src)
    pixels, valid = raster.read_window(src, Window(0, 0, info.height, info.width), bands=(3, 2, 1))
    assert pixels.dtype == np.uint16 and 0.3 < valid.mean() < 0.7  # the alpha band's collar
    predictor = TilePredictor(tiny_model_path, batch_size=16)
    probs = predict_array(pixels, predictor, tile=256, overlap=64, blend="gaussian", valid=valid, fill=predictor.fill)
    group = zarr.open_group(str(out), mode="r")[report.group]
    mask = group["mask"][:]
    np.testing.assert_array_equal(mask, to_mask(probs, valid))
    assert (mask[~valid] == 255).all() and (mask[valid] != 255).all()
    stored = group["probability"][:]
    assert stored.dtype == np.uint8 and (stored[:, ~valid] == 255).all()
    expected = np.rint(np.moveaxis(probs, -1, 0) * 254)
    assert np.abs(stored[:, valid].astype(int) - expected[:, valid]).max() <= 1


def test_bad_file_fails_alone(ray_local, data_dir, tiny_model_path, tmp_path):
    """A directory mixing good images with a corrupt one, and a file named that is not there: the good ones
    finish, each bad one fails naming itself (so the exit status is 1), a text file is skipped."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(data_dir / "rasterio" / "shade.tif", src / "shade.tif")
    shutil.copy(data_dir / "rasterio" / "RGB.byte.tif", src / "rgb.tif")
    good = (data_dir / "rasterio" / "RGB.byte.tif").read_bytes()
    (src / "broken.tif").write_bytes(good[: len(good) // 3])
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "mixed.zarr"
    typo = str(tmp_path / "shade_typo.tif")
    summary = segment(
        inputs=[str(src), typo], out=out, model=tiny_model_path, bands=(1, 1, 1), block=1024, progress=False
    )
    by_name = {Path(r.path).name: r for r in summary.images}
    assert not summary.ok and summary.totals.failed == 2
    assert by_name["broken.tif"].status == "failed" and "broken.tif" in by_name["broken.tif"].error
    assert by_name["shade_typo.tif"].status == "failed" and by_name["shade_typo.tif"].error == f"{typo}: no such file"
    assert by_name["shade.tif"].status == "done"
    assert by_name["rgb.tif"].status == "done"
    assert by_name["notes.txt"].status == "skipped"
    assert set(store.image_groups(str(out))) >= {"shade", "rgb"}
    rgb = zarr.open_group(str(out), mode="r")["rgb"]["mask"][:]
    assert (rgb == 255).any() and (rgb != 255).any()  # the nodata collar stays nodata


def test_sparse_scene_costs_in_proportion_to_valid_area(ray_local, data_dir, tiny_model_path, tmp_path):
    """RGB.byte.tif has a wide nodata collar: fully invalid tiles are skipped, counted and reported."""
    path = data_dir / "rasterio" / "RGB.byte.tif"
    out = tmp_path / "sparse.zarr"
    summary = segment(
        inputs=[str(path)], out=out, model=tiny_model_path, tile=64, overlap=16, block=1024, progress=False
    )
    r = summary.images[0]
    assert r.status == "done"
    assert r.tiles_skipped > 0 and r.tiles_run > 0
    assert summary.totals.tiles_skipped == r.tiles_skipped
    info = raster.open_info(str(path))
    _, valid = raster.read_window(str(path), Window(0, 0, info.height, info.width))
    grid = TileGrid(info.height, info.width, tile=64, overlap=16)
    touching_valid = sum(bool(valid[t.row : t.row + 64, t.col : t.col + 64].any()) for t in grid.tiles())
    assert r.tiles_run == touching_valid  # exactly the tiles that see a valid pixel (one block: no repeats)
    assert r.tiles_run + r.tiles_skipped == grid.count


def test_existing_store_needs_resume_or_overwrite(ray_local, data_dir, tiny_model_path, tmp_path):
    out = tmp_path / "twice.zarr"
    args = dict(inputs=[str(data_dir / "rasterio" / "shade.tif")], out=out)
    assert segment(**args, model=tiny_model_path, bands=(1, 1, 1), progress=False).ok
    with pytest.raises(FileExistsError, match="--resume"):
        segment(**args, model=tiny_model_path, bands=(1, 1, 1), progress=False)
    again = segment(**args, model=tiny_model_path, bands=(1, 1, 1), resume=True, progress=False)
    assert again.ok and again.images[0].blocks_run == 0  # nothing left to do
    # The store contract: a resume with another plan is refused, naming the difference, and changes nothing.
    changed = segment(**args, model=tiny_model_path, bands=(1, 1, 1), resume=True, overlap=32, progress=False)
    assert not changed.ok and "planned differently" in changed.images[0].error
    assert "overlap 64 -> 32" in changed.images[0].error
    # --overwrite of a directory that is not a tileseg store (a typo for data.zarr) deletes nothing.
    data = tmp_path / "data"
    data.mkdir()
    (data / "scene.tif").write_bytes((data_dir / "rasterio" / "shade.tif").read_bytes())
    (data / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a tileseg store"):
        segment(inputs=[str(data)], out=data, model=tiny_model_path, overwrite=True, progress=False)
    with pytest.raises(StoreError, match="would delete the input"):
        segment(inputs=[str(out / "x.tif")], out=out, model=tiny_model_path, overwrite=True, progress=False)
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "scene.tif"]
    # A second writer is refused while the store is locked.
    from tileseg.contract import StoreLock

    with StoreLock(out), pytest.raises(StoreError, match="another run is writing this store"):
        segment(**args, model=tiny_model_path, bands=(1, 1, 1), resume=True, progress=False)


def test_pool_size_never_claims_every_cpu():
    actors, gpus, cpus, threads = pool_size(None, None, {"CPU": 2})
    assert (actors, gpus) == (1, 0.0) and cpus <= 1 and threads == 2
    actors, gpus, cpus, _ = pool_size(2, None, {"CPU": 2})
    assert actors == 2 and 2 * cpus < 2
    actors, gpus, cpus, _ = pool_size(None, 0.5, {"CPU": 8, "GPU": 2})
    assert actors == 4 and gpus == 0.5 and 4 * cpus < 8


def _claims_fit(size: PoolSize, nodes: list[NodeResources]) -> bool:
    """Whether every node that can hold an actor keeps CPU for the read and write tasks at full density."""
    for n in nodes:
        dense = int(n.gpus / size.gpus_per_actor + 1e-9) if size.gpus_per_actor else max(1, int(n.cpus // 8))
        if min(dense, size.actors) and size.cpus_per_actor * min(dense, size.actors) >= n.cpus:
            return False
    return True


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        # one actor per GPU, on the GPU nodes only; TF threads = the node's CPUs / its actors; 4 reads ahead
        ([NodeResources(8), NodeResources(16, 1), NodeResources(16, 1)], PoolSize(2, 1.0, 8.0, 16, 4)),
        ([NodeResources(32, 4)], PoolSize(4, 1.0, 7.75, 8, 4)),
        ([NodeResources(2, 1)], PoolSize(1, 1.0, 1.0, 2, 4)),
        ([NodeResources(4, 0.5)], PoolSize(1, 0.5, 3.0, 4, 4)),  # a shared (fractional) GPU: one actor
        # CPU only: 8 CPUs per actor, at least one per node; sized for the node where actors are densest
        ([NodeResources(2)], PoolSize(1, 0.0, 1.0, 2, 2)),
        ([NodeResources(16), NodeResources(16)], PoolSize(4, 0.0, 7.5, 8, 2)),
        ([NodeResources(64)], PoolSize(8, 0.0, 7.875, 8, 2)),
    ],
)
def test_pool_sized_from_the_nodes(nodes, expected):
    size = size_pool(None, None, nodes)
    assert size == expected
    assert _claims_fit(size, nodes)


def test_pool_sizing_follows_the_options():
    # --gpus-per-actor 0.5 on two 1-GPU nodes: four actors, two per node
    nodes = [NodeResources(1), NodeResources(4, 1), NodeResources(4, 1)]
    assert size_pool(None, 0.5, nodes) == PoolSize(4, 0.5, 1.5, 2, 4)
    # --actors 1 on a 4-GPU node: the one actor gets all the node's threads
    assert size_pool(1, None, [NodeResources(32, 4)]) == PoolSize(1, 1.0, 8.0, 32, 4)
    # --gpus-per-actor 1 before any GPU node is up (an autoscaling cluster): one actor, sized on what is there
    assert size_pool(None, 1, [NodeResources(4)]) == PoolSize(1, 1.0, 3.0, 4, 4)
    # --actors 3 on CPU nodes of 8 and 16 CPUs: spread by CPUs, rounded up (1 and 2 per node)
    size = size_pool(3, None, [NodeResources(8), NodeResources(16)])
    assert size == PoolSize(3, 0.0, 7.0, 8, 2)
    assert size_pool(None, None, []) == PoolSize(1, 0.0, 0.5, 1, 2)  # no node reported: one small actor


def test_cli_help_explains_the_options():
    result = subprocess.run(
        [sys.executable, "-m", "tileseg.cli", "segment", "--help"], capture_output=True, text=True, check=True
    )
    for option in ("--tile", "--overlap", "--blend", "--batch-size", "--bands", "--probabilities", "--actors",
                   "--gpus-per-actor", "--block", "--resume", "--fail-fast", "--model"):  # fmt: skip
        assert option in result.stdout


def test_cluster_config_is_valid_against_rays_schema():
    import jsonschema
    import ray
    import yaml

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert any(t.get("resources", {}).get("GPU", 0) >= 1 for t in types.values())
    assert any("tileseg" in cmd for cmd in config["setup_commands"])


def _item(path: str, read: tuple[int, int, int, int]):
    from tileseg.grid import Block
    from tileseg.segment import WorkItem

    return WorkItem(image=0, path=path, group="g", block=Block(0, Window(*read), Window(*read), (read[0],), (read[1],)))


def test_read_stage_ships_valid_only_when_something_is_invalid(data_dir):
    from tileseg.segment import read_block

    scene = str(data_dir / "kampala" / "scene" / "kampala_z21_image.tif")
    inside = read_block(_item(scene, (100, 100, 512, 512)), bands=[1, 2, 3])
    assert inside.error == "" and inside.pixels.shape == (512, 512, 3)
    assert inside.valid is None  # every pixel valid: nothing to ship
    shipped = [v for v in inside.to_row().values() if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in shipped) == inside.pixels.nbytes  # the row carries the pixels and no mask
    edge = read_block(_item(scene, (-64, -64, 512, 512)), bands=[1, 2, 3])
    assert edge.valid.shape == (512, 512) and not edge.valid[:64].any() and edge.valid[64:, 64:].all()
    bad = read_block(_item(str(data_dir / "nope.tif"), (0, 0, 8, 8)), bands=[1, 2, 3])
    assert "nope.tif" in bad.error and bad.pixels is None


def test_job_leaves_the_callers_ray_data_settings_alone(ray_local, data_dir, tiny_model_path, tmp_path):
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.execution_options.resource_limits
    ctx.enable_progress_bars = True  # a caller's own choices, which the job changes while it runs
    ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(object_store_memory=12345678)
    try:
        image = data_dir / "kampala" / "scene" / "kampala_z21_image.tif"
        summary = segment(
            inputs=[str(image)], out=tmp_path / "out.zarr", model=tiny_model_path, block=2048, progress=False
        )
        assert summary.ok
        assert ctx.enable_progress_bars is True
        assert ctx.execution_options.resource_limits.object_store_memory == 12345678
    finally:
        ctx.enable_progress_bars, ctx.execution_options.resource_limits = saved


def test_a_model_that_cannot_load_fails_the_job_cleanly(ray_local, data_dir, tiny_model_path, tmp_path):
    """Valid metadata, broken weights: only the actors find out. The job still ends with a summary naming
    the user's model file, every image marked failed, and exit status 1, not a traceback."""
    import zipfile

    from tileseg.segment import main

    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(tiny_model_path) as zin, zipfile.ZipFile(broken, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, b"not hdf5" if name.endswith(".h5") else zin.read(name))
    image = str(data_dir / "kampala" / "scene" / "kampala_z21_image.tif")
    out = tmp_path / "out.zarr"
    assert main([image, "--out", str(out), "--model", str(broken), "--quiet", "--block", "2048"]) == 1
    summary = json.loads((out / ".tileseg" / "summary.json").read_text())
    assert not summary["ok"]
    (report,) = summary["images"]
    assert report["status"] == "failed" and report["blocks_run"] == 0
    assert str(broken) in report["error"] and "cannot load model" in report["error"]


def test_a_store_that_cannot_be_written_is_a_clear_error(data_dir, tiny_model_path, tmp_path, capsys):
    from tileseg.segment import main

    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("not a directory")
    image = str(data_dir / "kampala" / "scene" / "kampala_z21_image.tif")
    assert main([image, "--out", str(in_the_way / "out.zarr"), "--model", str(tiny_model_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and str(in_the_way / "out.zarr") in err and "Traceback" not in err


def test_range_warning_from_the_header():
    from tileseg.artifact import ModelMeta
    from tileseg.segment import range_warning

    def meta(mean, std):
        return ModelMeta(classes=("a", "b"), bands=(1, 2, 3), mean=mean, std=std, tile=256, arch="unet")

    eight_bit = meta((110.0, 105.0, 95.0), (55.0, 50.0, 50.0))
    sixteen_bit = meta((1200.0, 1100.0, 900.0), (400.0, 380.0, 350.0))
    assert range_warning("uint8", eight_bit) is None
    assert "uint16 pixels" in range_warning("uint16", eight_bit) and "8-bit" in range_warning("uint16", eight_bit)
    assert range_warning("uint16", sixteen_bit) is None
    assert "8-bit pixels" in range_warning("uint8", sixteen_bit)
    assert range_warning("float32", eight_bit) is None  # a float's range is not in its type


def test_signed_8bit_and_complex_pixels_are_named(ray_local, data_dir, tiny_model_path, tmp_path):
    import rasterio

    from tileseg.artifact import ModelMeta
    from tileseg.segment import range_warning

    meta = ModelMeta(classes=("a", "b"), bands=(1, 2, 3), mean=(120.0,) * 3, std=(50.0,) * 3, tile=256, arch="u")
    assert "signed 8-bit" in range_warning("int8", meta)
    assert range_warning("uint8", meta) is None
    # A complex raster fails alone, by name; the other image of the batch is segmented.
    bad = tmp_path / "complex.tif"
    profile = dict(driver="GTiff", height=64, width=64, count=3, dtype="complex64", crs="EPSG:3857",
                   transform=rasterio.transform.from_origin(0, 0, 1, 1))  # fmt: skip
    with rasterio.open(bad, "w", **profile) as dst:
        dst.write(np.ones((3, 64, 64), np.complex64))
    good = str(data_dir / "rasterio" / "shade.tif")
    summary = segment(inputs=[str(bad), good], out=tmp_path / "o.zarr", model=tiny_model_path, bands=(1, 1, 1),
                      vectorize=str(tmp_path / "b.parquet"), progress=False)  # fmt: skip
    by_name = {Path(r.path).name: r for r in summary.images}
    assert by_name["complex.tif"].status == "failed" and "complex pixels" in by_name["complex.tif"].error
    assert by_name["shade.tif"].status == "done"
    # --vectorize: the finished image's polygons, as `tileseg vectorize` writes them.
    import geopandas as gpd

    from tileseg.vectorize import vectorize_store

    written = gpd.read_parquet(tmp_path / "b.parquet")
    assert set(written["image"]) <= {"shade"} and written.crs is not None
    expected = vectorize_store(tmp_path / "o.zarr", use_ray=False)
    assert len(written) == len(expected) and written.geometry.area.sum() == expected.geometry.area.sum()


def test_non_finite_pixels_are_nodata_and_non_finite_output_fails_the_image(
    ray_local, data_dir, tiny_model_path, tmp_path
):
    """inf, -inf and NaN pixels are masked 255 (never fed to the model as they are); a model whose output
    is NaN fails every image it touches with one line, and none is marked done."""
    from rasters import write_tif

    from tileseg.model import load_model, save_model

    with __import__("rasterio").open(data_dir / "rasterio" / "float_raster_with_nodata.tif") as ds:
        base, nodata = ds.read(1), ds.nodata
    data = np.tile(np.where(base == nodata, base, 100 + np.abs(base)), (8, 8)).astype(np.float32)  # 96 x 104
    data[5, 7], data[40, 50], data[90, 100] = np.inf, -np.inf, np.nan
    image = write_tif(tmp_path / "inf.tif", data, nodata=nodata)
    (tmp_path / "b").mkdir()
    same_name = shutil.copy(image, tmp_path / "b" / "inf.tif")  # a colliding name gets a group of its own
    args = dict(inputs=[str(image)], model=tiny_model_path, bands=(1, 1, 1), tile=64, overlap=16, progress=False)
    summary = segment(out=tmp_path / "inf.zarr", **{**args, "inputs": [str(image), str(same_name)]})
    assert summary.ok, summary
    assert [r.group for r in summary.images] == ["inf", "inf-2"]
    stored = zarr.open_group(str(tmp_path / "inf.zarr"), mode="r")
    mask = stored["inf"]["mask"][:]
    invalid = (data == nodata) | ~np.isfinite(data)
    assert mask[5, 7] == mask[40, 50] == mask[90, 100] == 255
    np.testing.assert_array_equal(mask == 255, invalid)
    np.testing.assert_array_equal(stored["inf-2"]["mask"][:], mask)

    model, meta = load_model(tiny_model_path)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    nan_model = save_model(model, tmp_path / "nan.keras", meta)
    shade = str(data_dir / "rasterio" / "shade.tif")
    out = tmp_path / "nan.zarr"
    failed = segment(**{**args, "inputs": [str(image), shade], "model": nan_model}, out=out)
    assert not failed.ok and failed.status == "failed"
    for report in failed.images:
        assert report.status == "failed" and "non-finite" in report.error and "\n" not in report.error
        assert report.path in report.error
        assert store.done_blocks(str(out), report.group) == set()
        assert zarr.open_group(str(out), mode="r")[report.group].attrs.get("complete") is not True


def test_overwrite_clears_the_store_only_once_planning_succeeded(ray_local, data_dir, tiny_model_path, tmp_path):
    """An --overwrite whose inputs cannot be planned leaves the old store as it was; one that can replaces
    the store and nothing beside it (the input directory, an unrelated directory)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(data_dir / "rasterio" / "shade.tif", inputs / "shade.tif")
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("mine")
    out = tmp_path / "out.zarr"
    args = dict(model=tiny_model_path, bands=(1, 1, 1), progress=False)
    assert segment(inputs=[str(inputs)], out=out, **args).ok
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(StoreError, match="no image found.*--overwrite left the store as it was"):
        segment(inputs=[str(empty)], out=out, overwrite=True, **args)
    broken = tmp_path / "broken.tif"
    broken.write_bytes((data_dir / "rasterio" / "shade.tif").read_bytes()[:5000])
    with pytest.raises(StoreError, match="no input could be planned.*broken.tif.*left the store as it was"):
        segment(inputs=[str(broken)], out=out, overwrite=True, **args)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert zarr.open_group(str(out), mode="r")["shade"].attrs["complete"] is True

    other = tmp_path / "other.tif"
    shutil.copy(data_dir / "rasterio" / "shade.tif", other)
    assert segment(inputs=[str(other)], out=out, overwrite=True, **args).ok
    assert store.image_groups(str(out)) == ["other"]  # replaced
    assert (inputs / "shade.tif").exists() and (unrelated / "keep.txt").read_text() == "mine"


def test_resume_with_a_changed_plan_is_refused_naming_the_change(ray_local, data_dir, tiny_model_path, tmp_path):
    """A changed block, blend, model or source fails the image, naming what changed, and writes nothing."""
    import os

    from tileseg.model import load_model, save_model

    image = tmp_path / "shade.tif"
    shutil.copy(data_dir / "rasterio" / "shade.tif", image)
    out = tmp_path / "out.zarr"
    args = dict(inputs=[str(image)], out=out, bands=(1, 1, 1), chunk=512, block=512, progress=False)
    assert segment(model=tiny_model_path, **args).ok
    flags = store.done_blocks(str(out), "shade")

    model, meta = load_model(tiny_model_path)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    other_model = save_model(model, tmp_path / "other.keras", meta)
    changes = [
        (dict(block=1024), "block 512 -> 1024"),
        (dict(blend="hann"), "blend 'gaussian' -> 'hann'"),
        (dict(model=other_model), "model: sha256 "),
    ]
    for change, says in changes:
        run = segment(**{"model": tiny_model_path, **args, **change, "resume": True})
        (report,) = run.images
        assert report.status == "failed" and "planned differently" in report.error and says in report.error, report
        assert report.blocks_run == 0
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the source changed since the store was made
    (report,) = segment(model=tiny_model_path, resume=True, **args).images
    assert report.status == "failed" and "source: mtime_ns" in report.error
    assert store.done_blocks(str(out), "shade") == flags
