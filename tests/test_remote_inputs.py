"""Remote inputs end to end: objects in the local S3 server (moto), named as URLs, GDAL virtual paths,
prefixes and patterns, segment exactly like the same file on disk; bad ones fail alone, in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.windows import Window as RioWindow
from s3server import SECRET_KEY

from tileseg import cli, raster
from tileseg.uri import redact, url_of


@pytest.fixture(scope="module")
def crop(data_dir, tmp_path_factory) -> Path:
    """A 512 x 768 crop of the Kampala scene (two blocks of 512), georeferenced like the scene."""
    scene = data_dir / "kampala" / "scene" / "kampala_z21_image.tif"
    out = tmp_path_factory.mktemp("crop") / "kampala.tif"
    with rasterio.open(scene) as src:
        win = RioWindow(512, 256, 768, 512)
        profile = {**src.profile, "height": 512, "width": 768, "transform": src.window_transform(win)}
        profile.update(tiled=True, blockxsize=256, blockysize=256)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=win))
    return out


def test_an_object_and_its_gdal_path_are_one_input(s3_server, crop):
    assert url_of("/vsis3/b/scenes/a.tif") == "s3://b/scenes/a.tif"
    assert url_of("/vsicurl/https://h/a.tif") == "https://h/a.tif" and url_of("/data/a.tif") == "/data/a.tif"
    url = s3_server.upload(crop, s3_server.bucket("ident") + "/scenes/kampala.tif")
    paths, skipped = raster.discover([url, "/vsis3/ident/scenes/kampala.tif", "s3://ident/scenes/"])
    assert paths == [url] and not skipped


def test_remote_reads_run_under_the_cloud_settings_and_local_ones_do_not(s3_server, crop, tmp_path):
    """No directory listing on open, merged ranges and bounded caches while a remote raster is open; after
    it, a local file's .msk sidecar (found by listing its directory) is still seen."""
    from rasterio._env import get_gdal_config
    from rasters import write_tif

    url = s3_server.upload(crop, s3_server.bucket("ident") + "/scenes/settings.tif")
    with raster._open(url) as ds:
        ds.read(1, window=((0, 64), (0, 64)))
        assert get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN") == "EMPTY_DIR"
        assert get_gdal_config("GDAL_HTTP_MERGE_CONSECUTIVE_RANGES") == "YES"
        assert int(get_gdal_config("VSI_CACHE_SIZE")) <= 2**27
        assert int(get_gdal_config("CPL_VSIL_CURL_CACHE_SIZE")) <= 2**28
    raster.read_window(url, raster.Window(0, 0, 64, 64))
    valid = np.ones((20, 30), bool)
    valid[5:10, 5:10] = False
    local = write_tif(tmp_path / "m.tif", np.full((3, 20, 30), 9, np.uint8), mask=valid, internal_mask=False)
    assert (tmp_path / "m.tif.msk").exists()
    np.testing.assert_array_equal(raster.read_window(local, raster.Window(0, 0, 20, 30))[1], valid)


def _segment(capfd, *args: str) -> tuple[int, str]:
    rc = cli.main(["segment", *args, "--block", "512", "--chunk", "256"])
    captured = capfd.readouterr()
    return rc, captured.out + captured.err


def _files_under(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and p.suffix != ".tmp")


@pytest.mark.slow
def test_remote_inputs_segment_like_the_local_file_and_bad_ones_fail_alone(
    ray_local, s3_server, crop, tiny_model_path, tmp_path, capfd
):
    """One batch: the local crop, the same bytes as an object (URL + its /vsis3 path: one input), under a
    prefix and matched by a pattern, plus a missing key, a missing bucket, an object that is not a raster
    and a prefix with no rasters. The good ones give the local mask; each bad one is one line; exit 1."""
    bucket = s3_server.bucket("remote-in")
    url = s3_server.upload(crop, f"{bucket}/one/kampala.tif")
    s3_server.upload(crop, f"{bucket}/prefix/sub/kampala.tif")
    s3_server.upload(crop, f"{bucket}/pattern/kampala.tif")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a raster")
    s3_server.upload(notes, f"{bucket}/bad/notes.tif")
    s3_server.upload(notes, f"{bucket}/docs/readme.txt")
    bad = {
        f"{bucket}/one/missing.tif": "failed",
        "s3://no-such-bucket-tileseg/x/scene.tif": "failed",
        f"{bucket}/bad/notes.tif": "failed",
        f"{bucket}/docs/": "skipped",
        f"s3://AKIATEST:{SECRET_KEY}@remote-in/one/leak.tif": "failed",  # a URL carrying a secret
    }
    good = [str(crop), url, "/vsis3/" + url.removeprefix("s3://"), f"{bucket}/prefix/", f"{bucket}/pattern/*.tif"]
    out = tmp_path / "batch.zarr"
    rc, log = _segment(capfd, *good, *bad, "--out", str(out), "--model", str(tiny_model_path))
    assert rc == 1, log
    summary = json.loads((out / ".tileseg" / "summary.json").read_text())
    rows = {r["path"]: r for r in summary["images"]}
    done = [r for r in summary["images"] if r["status"] == "done"]
    assert [r["path"] for r in done] == [
        str(crop),
        url,
        f"{bucket}/prefix/sub/kampala.tif",
        f"{bucket}/pattern/kampala.tif",
    ]
    root = zarr.open_group(str(out), mode="r")
    expected = root[done[0]["group"]]["mask"][:]
    assert expected.shape == (512, 768) and (expected != 255).all()
    for r in done[1:]:
        np.testing.assert_array_equal(root[r["group"]]["mask"][:], expected)
    for path, status in bad.items():
        path = redact(path)  # as recorded and shown: s3://***@remote-in/... for the one with a secret
        assert rows[path]["status"] == status and "\n" not in rows[path]["error"], rows[path]
        lines = [line for line in log.splitlines() if path in line]
        assert len(lines) == 1, (path, lines)  # one line each in the printed report
        if status == "failed":
            assert rows[path]["error"].startswith(path)
    assert SECRET_KEY not in log and SECRET_KEY not in _files_under(out)

    # The plan records the object's version: a replaced object is not resumed as if unchanged.
    source = root[done[1]["group"]].attrs["plan"]["source"]
    assert source["size"] == crop.stat().st_size and source["etag"]
    with rasterio.open(crop) as src:
        profile, data = src.profile, src.read()
    changed = tmp_path / "changed.tif"
    with rasterio.open(changed, "w", **profile) as dst:
        dst.write(255 - data)
    s3_server.upload(changed, url)
    rc, log = _segment(capfd, str(crop), url, "--out", str(out), "--model", str(tiny_model_path), "--resume")
    rows = {r["path"]: r for r in json.loads((out / ".tileseg" / "summary.json").read_text())["images"]}
    assert rc == 1 and rows[str(crop)]["status"] == "done" and rows[url]["status"] == "failed", log
    assert "planned differently" in rows[url]["error"] and "source" in rows[url]["error"]


@pytest.mark.slow
def test_a_stac_item_collection_in_the_bucket_is_segmented(
    ray_local, s3_server, crop, tiny_model_path, tmp_path, capfd
):
    """Items read from s3:// (into a Zarr v2 store); the image asset's relative href resolves against the
    document; the group is named after the item and records it; an item without an image asset is one
    line naming it."""
    bucket = s3_server.bucket("stac-in")
    s3_server.upload(crop, f"{bucket}/scenes/kampala.tif")
    cog = "image/tiff; application=geotiff; profile=cloud-optimized"
    self_link = "https://example.org/stac/kampala/2024-05.json"
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "kampala/2024-05",
        "properties": {"datetime": "2024-05-01T10:00:00Z"},
        "links": [{"rel": "self", "href": self_link}],
        "assets": {
            "thumbnail": {"href": "../scenes/kampala.png", "type": "image/png", "roles": ["thumbnail"]},
            "image": {"href": "../scenes/kampala.tif", "type": cog},
        },
    }
    bare = {**item, "id": "no-image", "assets": {"thumbnail": item["assets"]["thumbnail"]}}
    doc = tmp_path / "items.json"
    doc.write_text(json.dumps({"type": "FeatureCollection", "features": [item, bare]}))
    items_url = s3_server.upload(doc, f"{bucket}/catalog/items.json")
    out = tmp_path / "stac.zarr"
    args = ("--out", str(out), "--model", str(tiny_model_path), "--zarr-format", "2")  # and a v2 store end to end
    rc, log = _segment(capfd, str(crop), items_url, *args)
    assert rc == 1, log  # the item without an image fails
    rows = json.loads((out / ".tileseg" / "summary.json").read_text())["images"]
    assert [(r["group"], r["status"]) for r in rows] == [
        ("kampala", "done"),
        ("kampala_2024-05", "done"),
        (None, "failed"),
    ]
    assert rows[1]["path"] == f"{bucket}/scenes/kampala.tif"
    assert rows[2]["error"].startswith(f"{items_url}#no-image: no image asset")
    assert len([line for line in log.splitlines() if "#no-image" in line]) == 1
    root = zarr.open_group(str(out), mode="r")
    attrs = root["kampala_2024-05"].attrs["stac"]
    assert attrs["item_id"] == "kampala/2024-05" and attrs["href"] == f"{bucket}/scenes/kampala.tif"
    assert attrs["datetime"] == "2024-05-01T10:00:00Z" and attrs["self"] == self_link and attrs["asset"] == "image"
    np.testing.assert_array_equal(root["kampala_2024-05"]["mask"][:], root["kampala"]["mask"][:])
    assert root.metadata.zarr_format == 2
    with rasterio.open(f'ZARR:"{out}":/kampala_2024-05/mask') as ds, rasterio.open(crop) as src:
        assert ds.crs == src.crs and ds.transform.almost_equals(src.transform, precision=1e-9)
        np.testing.assert_array_equal(ds.read(1), root["kampala"]["mask"][:])
    assert SECRET_KEY not in log and SECRET_KEY not in _files_under(out)


@pytest.fixture
def wrong_credentials(s3_server, monkeypatch):
    """The S3 server checks signatures (moto's own switch), and this process holds a real access key id
    with the wrong secret: every request is refused. Checks are off again afterwards."""
    import boto3
    import requests

    iam = boto3.client("iam", endpoint_url=s3_server.endpoint)
    iam.create_user(UserName="tileseg-wrong-secret")
    key_id = iam.create_access_key(UserName="tileseg-wrong-secret")["AccessKey"]["AccessKeyId"]
    requests.post(f"{s3_server.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)  # not this key's secret
    try:
        yield
    finally:
        requests.post(f"{s3_server.endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


def test_wrong_credentials_give_one_line_per_url(s3_server, crop, tiny_model_path, tmp_path, capfd, request):
    bucket = s3_server.bucket("creds")
    url = s3_server.upload(crop, f"{bucket}/scenes/fresh.tif")  # never opened before: no cached reads
    s3_server.upload(crop, f"{bucket}/listed/a.tif")
    inputs = [url, f"{bucket}/listed/", f"{bucket}/listed/*.tif"]
    request.getfixturevalue("wrong_credentials")
    out = tmp_path / "creds.zarr"
    rc, log = _segment(capfd, *inputs, "--out", str(out), "--model", str(tiny_model_path))
    assert rc == 1, log
    rows = {r["path"]: r for r in json.loads((out / ".tileseg" / "summary.json").read_text())["images"]}
    assert rows[url]["status"] == "failed" and rows[url]["error"].startswith(f"{url}: not a readable raster")
    for prefix in inputs[1:]:
        assert rows[prefix]["status"] == "skipped" and rows[prefix]["error"].startswith("cannot list")
    for path in inputs:
        why = rows[path]["error"].lower()  # told why: the signature (or, from a cached client, the key id) is refused
        assert "\n" not in why and ("signature" in why or "access key id" in why), why
        assert len([line for line in log.splitlines() if path in line.split()]) == 1, (path, log)
    assert "Traceback" not in log and SECRET_KEY not in log and SECRET_KEY not in _files_under(out)
