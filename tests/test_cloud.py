"""The job's output in object storage: a real S3 server on 127.0.0.1 (moto), real Ray, GeoTIFFs and Zarr.

A crop of the Kampala scene is segmented from the bucket into the bucket and from disk onto disk; the two
masks must be identical, and everything that works on a local store (resume, overwrite, export, evaluate)
must work on the bucket's. The secret key must never appear in a written file or a printed line.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from s3server import SECRET_KEY

from tileseg.cli import main

BUCKET = "tileseg-cloud"
GROUP = "kampala_crop"
JOB = ["--block", "512", "--chunk", "512", "--quiet"]  # a 512x1024 crop: two blocks


def _cli(args: list[str]) -> tuple[int, str]:
    """`tileseg ARGS` in this process: (exit status, stdout + stderr). The secret never shows in either."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    text = out.getvalue() + err.getvalue()
    assert SECRET_KEY not in text
    return rc, text


def _crop(src: Path, dst: Path, height: int = 512, width: int = 1024) -> Path:
    """A real GeoTIFF cut from a real one (same CRS, the window's transform)."""
    with rasterio.open(src) as ds:
        window = rasterio.windows.Window(1024, 512, width, height)
        profile = ds.profile | {"height": height, "width": width, "transform": ds.window_transform(window)}
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read(window=window))
    return dst


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """One embedded Ray for the module's jobs, started once the S3 variables are set."""
    import ray

    from tileseg.ray_session import RaySession

    with RaySession(num_cpus=2) as session:
        yield session
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def runs(s3_server, ray_local, data_dir, tiny_model_path, tmp_path_factory):
    """The same job twice: disk to disk, and bucket to bucket."""
    tmp = tmp_path_factory.mktemp("cloud")
    scene_dir = tmp / "scenes"
    scene_dir.mkdir()
    scene = _crop(data_dir / "kampala" / "scene" / "kampala_z21_image.tif", scene_dir / f"{GROUP}.tif")
    truth = _crop(data_dir / "kampala" / "scene" / "kampala_z21_mask.tif", tmp / "truth.tif")
    bucket = s3_server.bucket(BUCKET)
    s3_server.upload(scene, f"{bucket}/scenes/{GROUP}.tif")
    s3_server.upload(truth, f"{bucket}/truth/mask.tif")
    model = ["--model", str(tiny_model_path)]
    local = tmp / "local.zarr"
    assert _cli(["segment", str(scene_dir), "--out", str(local), *model, *JOB])[0] == 0
    remote = f"{bucket}/run.zarr"
    rc, text = _cli(["segment", f"{bucket}/scenes/", "--out", remote, *model, *JOB])
    assert rc == 0, text
    return {"tmp": tmp, "local": local, "remote": remote, "model": model, "bucket": bucket, "truth": truth}


def _mask(store: str | Path) -> np.ndarray:
    return zarr.open_group(str(store), mode="r")[GROUP]["mask"][:]


@pytest.mark.slow  # the module's jobs on 2 CPUs: a minute or more
def test_bucket_to_bucket_equals_disk_to_disk_and_opens_georeferenced(runs, s3_server):
    import xarray as xr

    pytest.importorskip("rioxarray")  # the .rio accessor

    local = _mask(runs["local"])
    assert (local != 255).all()
    np.testing.assert_array_equal(_mask(runs["remote"]), local)
    summary = json.loads(
        s3_server.client().get_object(Bucket=BUCKET, Key="run.zarr/.tileseg/summary.json")["Body"].read()
    )
    assert summary["ok"] and summary["store"] == runs["remote"]
    assert summary["images"][0]["path"] == f"{runs['bucket']}/scenes/{GROUP}.tif"

    options = {"endpoint_url": s3_server.endpoint}  # credentials from the standard variables
    ds = xr.open_zarr(runs["remote"], group=GROUP, storage_options=options, decode_coords="all")
    with rasterio.open(runs["tmp"] / "scenes" / f"{GROUP}.tif") as src:
        assert ds.rio.crs == src.crs
        assert ds.rio.transform() == src.transform
    np.testing.assert_array_equal(ds["mask"].values, local)


@pytest.mark.slow  # the module's jobs on 2 CPUs: a minute or more
def test_resume_in_the_bucket_redoes_only_the_blocks_without_a_flag(runs, s3_server):
    client = s3_server.client()
    # Block 1 (columns 512..1023): its flag and its chunk go; block 0 stays done.
    client.delete_objects(
        Bucket=BUCKET,
        Delete={"Objects": [{"Key": f"run.zarr/{GROUP}/blocks_done/c/1"}, {"Key": f"run.zarr/{GROUP}/mask/c/0/1"}]},
    )
    assert (_mask(runs["remote"])[:, 512:] == 255).all()
    rc, text = _cli(["segment", f"{runs['bucket']}/scenes/", "--out", runs["remote"], *runs["model"], *JOB, "--resume"])
    assert rc == 0, text
    summary = json.loads(client.get_object(Bucket=BUCKET, Key="run.zarr/.tileseg/summary.json")["Body"].read())
    report = summary["images"][0]
    assert (report["blocks_resumed"], report["blocks_run"]) == (1, 1)
    np.testing.assert_array_equal(_mask(runs["remote"]), _mask(runs["local"]))


@pytest.mark.slow  # the module's jobs on 2 CPUs: a minute or more
def test_overwrite_replaces_a_store_in_the_bucket_and_refuses_a_foreign_prefix(runs, s3_server, tmp_path):
    client = s3_server.client()
    client.put_object(Bucket=BUCKET, Key="run.zarr/stale/zarr.json", Body=b"{}")  # not the job's: goes
    rc, text = _cli(["segment", f"{runs['bucket']}/scenes/", "--out", runs["remote"], *runs["model"], *JOB,
                     "--overwrite"])  # fmt: skip
    assert rc == 0, text
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="run.zarr/")["Contents"]}
    assert "run.zarr/stale/zarr.json" not in keys and f"run.zarr/{GROUP}/mask/c/0/0" in keys
    np.testing.assert_array_equal(_mask(runs["remote"]), _mask(runs["local"]))

    client.put_object(Bucket=BUCKET, Key="photos/a.jpg", Body=b"mine")
    rc, text = _cli(["segment", f"{runs['bucket']}/scenes/", "--out", f"{runs['bucket']}/photos", *runs["model"],
                     *JOB, "--overwrite"])  # fmt: skip
    assert rc == 2 and "not a tileseg store" in text and len(text.strip().splitlines()) == 1
    assert [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="photos/")["Contents"]] == ["photos/a.jpg"]


def test_an_unusable_bucket_is_refused_before_anything_is_written(s3_server, tiny_model_path):
    scenes = s3_server.bucket(BUCKET) + "/scenes/"
    # A URL carrying a secret is shown without it.
    for out in ("s3://no-such-bucket-here/run.zarr", f"s3://someone:{SECRET_KEY}@no-such-bucket/run.zarr"):
        rc, text = _cli(["segment", scenes, "--out", out, "--model", str(tiny_model_path), *JOB])
        assert rc == 2 and len(text.strip().splitlines()) == 1, text
        assert "no such bucket" in text or "cannot reach the bucket" in text, text
    names = {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}
    assert not any("no-such" in n for n in names)


@pytest.mark.slow  # the module's jobs on 2 CPUs: a minute or more
def test_export_cogs_from_and_to_the_bucket(runs, s3_server):
    from tileseg.uri import gdal_cloud_options, gdal_path

    cog_dir = runs["tmp"] / "cog"
    rc, text = _cli(["export", runs["remote"], "--cog", str(cog_dir)])
    assert rc == 0, text
    with rasterio.open(cog_dir / f"{GROUP}.tif") as ds:
        local_cog = ds.read(1)
        assert ds.crs is not None and ds.overviews(1)
    np.testing.assert_array_equal(local_cog, _mask(runs["local"]))

    rc, text = _cli(["export", runs["remote"], "--cog", f"{runs['bucket']}/cogs/"])
    assert rc == 0 and f"{runs['bucket']}/cogs/{GROUP}.tif" in text, text
    with rasterio.Env(**gdal_cloud_options()), rasterio.open(gdal_path(f"{runs['bucket']}/cogs/{GROUP}.tif")) as ds:
        np.testing.assert_array_equal(ds.read(1), local_cog)
    assert _cli(["export", runs["remote"], "--cog", "s3://no-such-bucket-here/cogs/"])[0] == 2


@pytest.mark.slow  # the module's jobs on 2 CPUs: a minute or more
def test_evaluate_a_store_and_truth_in_the_bucket(runs, tmp_path):
    remote_dir, local_dir = tmp_path / "remote_eval", tmp_path / "local_eval"
    rc, text = _cli(["evaluate", runs["remote"], "--truth", f"{runs['bucket']}/truth/mask.tif",
                     "--out", str(remote_dir), "--no-quicklooks"])  # fmt: skip
    assert rc == 0, text
    rc, text = _cli(["evaluate", str(runs["local"]), "--truth", str(runs["truth"]), "--out", str(local_dir),
                     "--no-quicklooks"])  # fmt: skip
    assert rc == 0, text
    remote = json.loads((remote_dir / "metrics.json").read_text())
    local = json.loads((local_dir / "metrics.json").read_text())
    assert remote["overall"] == local["overall"]
    assert remote["store"] == runs["remote"]


@pytest.mark.slow  # the module's jobs on 2 CPUs: a minute or more
def test_no_secret_in_any_file_written(runs, s3_server):
    """Every object in the bucket and every file the module wrote locally is free of the secret key."""
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.endswith("summary.json") for k in keys)
    for key in keys:
        assert SECRET_KEY.encode() not in client.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key
    files = [p for p in runs["tmp"].rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in files)
    for path in files:
        assert SECRET_KEY.encode() not in path.read_bytes(), path


def test_a_local_out_needs_shared_fs_on_more_than_one_node():
    from tileseg.errors import OptionError
    from tileseg.segment.options import check_nodes

    with pytest.raises(OptionError, match=r"--out: /data/run.zarr is a local path, but the Ray cluster has 3 nodes.*"
                       r"s3://, gs://, az://.*--shared-fs"):  # fmt: skip
        check_nodes("/data/run.zarr", 3, shared_fs=False)
    check_nodes("/data/run.zarr", 3, shared_fs=True)
    check_nodes("/data/run.zarr", 1, shared_fs=False)
    check_nodes("s3://bucket/run.zarr", 3, shared_fs=False)


def test_workers_get_the_cloud_variables_and_nothing_else():
    from tileseg.uri import cloud_env

    env = {"AWS_ENDPOINT_URL": "http://h:9", "AWS_SECRET_ACCESS_KEY": "s", "AWS_PROFILE": "mine", "HOME": "/root",
           "AZURE_STORAGE_SAS_TOKEN": "t", "AWS_REGION": ""}  # fmt: skip
    assert cloud_env(env) == {
        "AWS_ENDPOINT_URL": "http://h:9",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AZURE_STORAGE_SAS_TOKEN": "t",
    }
