"""Object-storage paths: GDAL names, GDAL settings, redaction, and a real read from the local S3 server."""

from __future__ import annotations

import numpy as np
import pytest
from s3server import SECRET_KEY

from tileseg import raster
from tileseg.uri import gdal_cloud_options, gdal_path, is_remote, is_uri, redact


def test_gdal_path_for_each_kind():
    assert gdal_path("s3://b/scenes/a.tif") == "/vsis3/b/scenes/a.tif"
    assert gdal_path("gs://b/a.tif") == "/vsigs/b/a.tif"
    assert gdal_path("az://c/a.tif") == "/vsiaz/c/a.tif"
    assert gdal_path("https://example.org/a.tif") == "/vsicurl/https://example.org/a.tif"
    assert gdal_path("/vsis3/b/a.tif") == "/vsis3/b/a.tif" and gdal_path("/data/a.tif") == "/data/a.tif"
    assert is_uri("/vsis3/b/a.tif") and not is_remote("/vsis3/b/a.tif") and is_remote("s3://b/a")
    assert not is_uri("/data/a.tif")


def test_endpoint_is_given_to_gdal_in_its_own_terms():
    opts = gdal_cloud_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert opts["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and opts["AWS_HTTPS"] == "NO"
    assert opts["AWS_VIRTUAL_HOSTING"] == "FALSE" and opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    mine = gdal_cloud_options({"AWS_ENDPOINT_URL": "http://x:1", "AWS_S3_ENDPOINT": "y:2", "VSI_CACHE": "FALSE"})
    assert "AWS_S3_ENDPOINT" not in mine and "VSI_CACHE" not in mine  # the user's own settings win


def test_redact_removes_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verysecretvalue")
    text = redact(
        "s3://AKIA:verysecretvalue@b/k failed; https://h/a.tif?X-Amz-Signature=abcd&x=1&sig=zz; key verysecretvalue"
    )
    assert "verysecretvalue" not in text and "abcd" not in text and "zz" not in text
    assert "x=1" in text and "https://h/a.tif" in text


def test_a_raster_in_the_bucket_reads_like_the_local_file(s3_server, data_dir):
    scene = data_dir / "kampala" / "scene" / "kampala_z21_image.tif"
    url = s3_server.upload(scene, s3_server.bucket("geo") + "/scenes/kampala.tif")
    remote, local = raster.open_info(url), raster.open_info(str(scene))
    assert (remote.height, remote.width, remote.crs, remote.transform) == (
        local.height,
        local.width,
        local.crs,
        local.transform,
    )
    window = raster.Window(100, 200, 300, 256)
    (rp, rv), (lp, lv) = raster.read_window(url, window), raster.read_window(str(scene), window)
    np.testing.assert_array_equal(rp, lp)
    np.testing.assert_array_equal(rv, lv)


def test_a_missing_object_is_one_line_naming_it(s3_server):
    url = s3_server.bucket("geo") + "/scenes/missing.tif"
    with pytest.raises(raster.RasterError) as err:
        raster.open_info(url)
    assert url in str(err.value) and "\n" not in str(err.value) and SECRET_KEY not in str(err.value)


def test_prefixes_and_patterns_are_listed_like_directories(s3_server, tmp_path):
    from rasters import write_tif

    bucket = s3_server.bucket("listing")
    for name in ("b.tif", "a.tif", "sub/c.tif", "notes.txt", "sub/d.png"):
        local = tmp_path / name.replace("/", "_")
        if name.endswith(".txt"):
            local.write_text("x")
        else:
            write_tif(local, np.zeros((8, 8, 3), np.uint8))
        s3_server.upload(local, f"{bucket}/scenes/{name}")
    paths, skipped = raster.discover([f"{bucket}/scenes/"])
    assert paths == [f"{bucket}/scenes/{n}" for n in ("a.tif", "b.tif", "sub/c.tif", "sub/d.png")]
    paths, _ = raster.discover([f"{bucket}/scenes/*.tif"])
    assert paths == [f"{bucket}/scenes/a.tif", f"{bucket}/scenes/b.tif"]
    paths, skipped = raster.discover([f"{bucket}/empty/", f"{bucket}/scenes/*.jp2", f"{bucket}/scenes/a.tif"])
    assert paths == [f"{bucket}/scenes/a.tif"]
    assert [why for _, why in skipped] == [
        "no objects under this prefix (or no such bucket)",
        "no objects match this pattern",
    ]
    paths, skipped = raster.discover(["s3://no-such-bucket-here/x/"])
    assert not paths and len(skipped) == 1 and SECRET_KEY not in skipped[0][1]
