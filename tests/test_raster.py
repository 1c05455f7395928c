"""Raster input: discovery, metadata, boundless windowed reads, validity masks and clear errors."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasters import write_tif

from tileseg import raster
from tileseg.artifact import normalise
from tileseg.grid import Window
from tileseg.raster import ImageInfo, RasterError, check_bands, discover, open_info, read_window

RASTERIO_FILES = ["RGB.byte.tif", "RGBA.uint16.tif", "shade.tif", "float_raster_with_nodata.tif"]
KAMPALA_FILES = ["kampala_z21_image.tif", "kampala_z21_mask.tif"]


def _full(path: Path, bands: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference: whole image via rasterio directly, (H, W, C) and GDAL's dataset mask."""
    with rasterio.open(path) as ds:
        return ds.read(bands).transpose(1, 2, 0), ds.dataset_mask() > 0


# ---------------------------------------------------------------------------------------------- discover


def test_discover_files_dirs_globs_and_skips(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    names = [
        "b.TIF",
        "a.tif",
        "notes.txt",
        "a.tif.aux.xml",
        "a.tif.ovr",
        "meta.json",
        "sub/c.png",
        "sub/deeper/d.JPEG",
        "sub/e.jp2",
        "sub/f.vrt",
        "sub/g.img",
        "sub/h.tiff",
        "sub/i.jpg",
        ".hidden.tif",
        ".git/x.tif",
        "README",
    ]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    paths, skipped = discover([str(tmp_path), str(tmp_path / "a.tif"), str(tmp_path / "missing.tif")])
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    assert rel == [
        "a.tif",
        "b.TIF",
        "sub/c.png",
        "sub/deeper/d.JPEG",
        "sub/e.jp2",
        "sub/f.vrt",
        "sub/g.img",
        "sub/h.tiff",
        "sub/i.jpg",
        "missing.tif",
    ]  # sorted, recursive, hidden skipped, duplicate a.tif once; a missing file named is left to open_info
    reasons = {os.path.relpath(p, tmp_path): r for p, r in skipped}
    assert set(reasons) == {"notes.txt", "a.tif.aux.xml", "a.tif.ovr", "meta.json", "README"}
    assert ".aux.xml" in reasons["a.tif.aux.xml"] and ".ovr" in reasons["a.tif.ovr"]
    assert "'.txt'" in reasons["notes.txt"]

    paths, skipped = discover([str(tmp_path / "sub" / "*.t*"), str(tmp_path / "nothing*.tif")])
    assert [os.path.basename(p) for p in paths] == ["h.tiff"]
    assert skipped == [(str(tmp_path / "nothing*.tif"), "no files match this pattern")]
    paths, _ = discover([str(tmp_path / "**" / "*.jp*"), str(tmp_path / "sub" / "deeper")])
    assert [os.path.basename(p) for p in paths] == ["e.jp2", "i.jpg", "d.JPEG"]  # globs are case-sensitive


def _touch(root: Path, *names: str) -> None:
    """Create small files (and their parent directories) under `root`."""
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")


def _rel(root: Path, paths: list[str]) -> list[str]:
    return [os.path.relpath(p, root) for p in paths]


@pytest.mark.parametrize("pattern", ["**/*.tif", "**", "*/**/*", "a/**/*.tif", "**/a/*.tif"])
def test_symlink_loop_gives_each_file_once(tmp_path: Path, pattern: str) -> None:
    _touch(tmp_path, "x.tif", "b.tif", "a/y.tif", "a/c/z.tif")
    os.symlink("..", tmp_path / "a" / "loop")  # a/loop -> the root: glob.glob's ** went round it ~40 times
    expected = {
        "**/*.tif": ["a/c/z.tif", "a/y.tif", "b.tif", "x.tif"],
        "**": ["a/c/z.tif", "a/y.tif", "b.tif", "x.tif"],
        "*/**/*": ["a/c/z.tif", "a/y.tif"],
        "a/**/*.tif": ["a/c/z.tif", "a/y.tif"],
        "**/a/*.tif": ["a/y.tif"],
    }[pattern]
    paths, skipped = discover([str(tmp_path / pattern)])
    assert _rel(tmp_path, paths) == expected
    assert [(os.path.relpath(p, tmp_path), "not followed" in r) for p, r in skipped] == [("a/loop", True)]
    paths, skipped = discover([str(tmp_path), str(tmp_path / "a" / "loop")])  # a link named directly: followed
    assert _rel(tmp_path, paths) == ["a/c/z.tif", "a/y.tif", "b.tif", "x.tif"]
    assert _rel(tmp_path, [p for p, _ in skipped]) == ["a/loop"]


def test_relative_patterns_give_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path, "a.tif", "sub/c.tif", ".h/x.tif")
    monkeypatch.chdir(tmp_path)
    for pattern in ["**", "**/*.tif", "*", "./**/*.tif"]:
        paths, skipped = discover([pattern])
        want = [p for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p)]
        assert paths == sorted(want) + (["sub/c.tif"] if pattern == "*" else []) and not skipped, pattern
    assert discover(["."]) == (["./a.tif", "./sub/c.tif"], [])


def test_same_file_by_two_paths_links_and_hard_links_once(tmp_path: Path) -> None:
    _touch(tmp_path, "d/a.tif", "d/b.tif", "real/r.tif")
    os.symlink("a.tif", tmp_path / "d" / "a_link.tif")  # file link: after a.tif in sorted order
    os.symlink("../d/b.tif", tmp_path / "d" / "0_first.tif")  # file link sorted before its target
    os.link(tmp_path / "d" / "a.tif", tmp_path / "d" / "hard.tif")
    os.symlink(tmp_path / "real", tmp_path / "alias")  # directory link named as an input
    inputs = [
        str(tmp_path / "d"),
        str(tmp_path / "d" / ".." / "d" / "a.tif"),
        str(tmp_path / "d" / "*.tif"),
        str(tmp_path / "real"),
        str(tmp_path / "alias"),
        str(tmp_path / "alias" / "r.tif"),
    ]
    paths, skipped = discover(inputs)
    assert _rel(tmp_path, paths) == ["d/0_first.tif", "d/a.tif", "real/r.tif"]  # first path, sorted, wins
    assert skipped == []
    assert discover(inputs) == (paths, skipped)  # deterministic: a resumed run sees the same list


def test_uris_and_gdal_paths_pass_unchecked(tmp_path: Path) -> None:
    uris = ["s3://bucket/scene.tif", "/vsis3/bucket/scene.tif", "/vsicurl/https://host/a.tif", "gs://b/x.TIFF"]
    paths, skipped = discover([*uris, uris[0], "s3://bucket/notes.txt", "/vsis3/bucket/*.tif"])
    # not stat'ed, not made absolute, in input order; deduplicated by URL: s3://b/k and /vsis3/b/k are one object
    assert paths == [uris[0], *uris[2:]]
    assert skipped == [
        ("s3://bucket/notes.txt", "not a raster: unknown extension '.txt'"),
        ("/vsis3/bucket/*.tif", "patterns are not expanded in GDAL virtual paths (use the URL form)"),
    ]


@pytest.mark.parametrize(
    "pattern", ["*.tif", "**/*.tif", "sub/**/*", "*/*.t?f", "s[uv]b/*", "**/.h*", ".*/*", "sub/*/", "**/deeper"]
)
def test_glob_matches_like_glob_glob_without_links(tmp_path: Path, pattern: str) -> None:
    _touch(tmp_path, "a.tif", "b.txt", ".h.tif", "sub/c.tif", "sub/deeper/d.tif", "sub/.hid/e.tif", ".g/f.tif")
    (tmp_path / "sub" / "empty").mkdir()
    expected = sorted(glob.glob(str(tmp_path / pattern), recursive=True))
    matches, links = raster._glob(str(tmp_path / pattern))
    assert [m for m, _ in matches] == [p.rstrip(os.sep) for p in expected] and links == []
    assert [is_dir for _, is_dir in matches] == [os.path.isdir(p) for p in expected]


# --------------------------------------------------------------------------------------------- open_info


def _outcome(result: ImageInfo | Exception) -> ImageInfo | str:
    """An open_info outcome in a comparable form: the info, or the error's type and message."""
    return result if isinstance(result, ImageInfo) else f"{type(result).__name__}: {result}"


def _open_one(path: str) -> ImageInfo | Exception:
    try:
        return open_info(path)
    except RasterError as e:
        return e


def test_open_infos_keeps_order_and_returns_each_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "empty.tif").write_bytes(b"")
    (tmp_path / "bad" / "text.tif").write_text("this is not an image\n")
    write_tif(tmp_path / "bad" / "cut.tif", np.ones((1, 64, 64), np.uint8))
    whole = (tmp_path / "bad" / "cut.tif").read_bytes()
    (tmp_path / "bad" / "cut.tif").write_bytes(whole[: len(whole) // 2])
    os.symlink(tmp_path / "bad" / "gone.tif", tmp_path / "bad" / "dangling.tif")
    bad = ["cut.tif", "dangling.tif", "empty.tif", "text.tif"]
    good = [tmp_path / f"good{i}.tif" for i in range(12)]
    for i, path in enumerate(good):
        write_tif(path, np.full((1, 8 + i, 5 + i), i, np.uint8))
    paths = [str(p) for i, g in enumerate(good) for p in (g, *([tmp_path / "bad" / bad[i]] if i < len(bad) else []))]
    paths += [str(tmp_path / "missing.tif"), paths[0]]
    results = raster.open_infos(paths, workers=4)
    assert [_outcome(r) for r in results] == [_outcome(_open_one(p)) for p in paths]
    assert [r.shape for r in results if isinstance(r, ImageInfo)][:3] == [(8, 5), (9, 6), (10, 7)]
    assert sum(isinstance(r, RasterError) for r in results) == len(bad) + 1
    assert [_outcome(r) for r in raster.open_infos(paths, workers=1)] == [_outcome(r) for r in results]
    assert raster.open_infos([]) == []
    with pytest.raises(ValueError, match="workers"):
        raster.open_infos(paths, workers=0)


@pytest.mark.parametrize("name", RASTERIO_FILES + KAMPALA_FILES)
def test_open_info_matches_gdal(data_dir: Path, name: str) -> None:
    sub = "rasterio" if name in RASTERIO_FILES else "kampala/scene"
    path = data_dir / sub / name
    info = open_info(path)
    with rasterio.open(path) as ds:
        assert (info.height, info.width, info.bands) == (ds.height, ds.width, ds.count)
        assert info.dtype == ds.dtypes[0]
        assert rasterio.crs.CRS.from_wkt(info.crs) == ds.crs
        assert info.transform == tuple(ds.transform)[:6]
        assert info.nodata == ds.nodata
        assert info.driver == "GTiff"
    back = ImageInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert back == info
    assert info.has_crs


def test_alpha_band_is_excluded_and_defines_validity(data_dir: Path) -> None:
    path = data_dir / "rasterio" / "RGBA.uint16.tif"
    info = open_info(path)
    assert info.alpha_band == 4 and info.data_bands == (1, 2, 3)
    px, valid = read_window(path, Window(0, 0, info.height, info.width))
    assert px.shape == (411, 634, 3) and px.dtype == np.uint16
    with rasterio.open(path) as ds:
        alpha = ds.read(4)
    np.testing.assert_array_equal(valid, alpha > 0)
    assert 0 < valid.mean() < 1


def test_png_has_pixel_transform_and_no_crs(data_dir: Path) -> None:
    path = sorted((data_dir / "zanzibar" / "images").glob("*.png"))[0]
    info = open_info(path)
    assert info.crs is None and not info.has_crs
    assert info.transform == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert (info.height, info.width, info.bands, info.dtype) == (256, 256, 3, "uint8")
    px, valid = read_window(path, Window(200, -10, 100, 100))
    assert px.shape == (100, 100, 3) and valid[:56, 10:].all() and not valid[56:].any()
    assert not valid[:, :10].any()


def test_opencv_fallback_when_gdal_refuses(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sorted((data_dir / "zanzibar" / "images").glob("*.png"))[0]
    expected, _ = read_window(path, Window(0, 0, 256, 256))

    def refuse(*args: object, **kwargs: object) -> None:
        raise rasterio.errors.RasterioIOError("not recognized as being in a supported file format")

    monkeypatch.setattr(raster.rasterio, "open", refuse)
    info = open_info(path)
    assert info.driver == "OpenCV" and info.crs is None and info.shape == (256, 256)
    px, valid = read_window(path, Window(-5, 0, 256, 256))
    assert valid[5:].all() and not valid[:5].any()
    # JPEG decoders may differ by a grey level; the channel order must be RGB like GDAL's.
    assert np.abs(px[5:].astype(int) - expected[:-5].astype(int)).mean() < 2


# ---------------------------------------------------------------------------------------- windowed reads

EDGE_WINDOWS = [
    Window(0, 0, 100, 100),  # inside
    Window(-30, 40, 100, 120),  # past the top
    Window(650, 40, 100, 120),  # past the bottom
    Window(40, -25, 100, 120),  # past the left
    Window(40, 740, 100, 120),  # past the right
    Window(-7, -9, 64, 64),  # top-left corner
    Window(690, 770, 64, 64),  # bottom-right corner
    Window(-50, -60, 900, 950),  # bigger than the image on every side
    Window(800, 900, 10, 10),  # entirely outside
    Window(-20, -20, 5, 5),  # entirely outside, negative
]


@pytest.mark.parametrize("window", EDGE_WINDOWS, ids=lambda w: f"{w.row}_{w.col}_{w.height}_{w.width}")
def test_boundless_window_matches_full_read(data_dir: Path, window: Window) -> None:
    path = data_dir / "rasterio" / "RGB.byte.tif"  # 718 x 791, nodata 0 collar
    full, full_valid = _full(path)
    H, W = full_valid.shape
    r, c, h, w = window
    rows, cols = np.arange(r, r + h), np.arange(c, c + w)
    inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
    px, valid = read_window(path, window, fill=7, fill_invalid=False)
    assert px.shape == (h, w, 3) and px.dtype == np.uint8 and valid.shape == (h, w)
    assert px.flags.c_contiguous  # read straight into (h, w, C) pixels, as the job and training need
    ri, ci = np.clip(rows, 0, H - 1), np.clip(cols, 0, W - 1)
    ref = full[np.ix_(ri, ci)]
    np.testing.assert_array_equal(px[inside], ref[inside])
    assert (px[~inside] == 7).all()
    np.testing.assert_array_equal(valid, inside & full_valid[np.ix_(ri, ci)])
    # default: invalid pixels (the collar too) hold the fill value
    px2, valid2 = read_window(path, window, fill=7)
    np.testing.assert_array_equal(valid2, valid)
    np.testing.assert_array_equal(px2[valid], ref[valid])
    assert (px2[~valid] == 7).all()


def test_band_selection_order_and_dtype_uint16(data_dir: Path) -> None:
    path = data_dir / "rasterio" / "RGBA.uint16.tif"  # 411 x 634, bands blue, green, red, alpha
    full, _ = _full(path, [1, 2, 3, 4])
    window = Window(110, 600, 50, 50)  # crosses the alpha edge and the right image edge
    px, valid = read_window(path, window, bands=(3, 2, 1), fill_invalid=False)
    assert px.dtype == np.uint16 and px.shape == (50, 50, 3)
    np.testing.assert_array_equal(px[:, :34], full[110:160, 600:634][:, :, [2, 1, 0]])
    assert not valid[:, 34:].any()
    alpha = full[110:160, 600:634, 3] > 0
    np.testing.assert_array_equal(valid[:, :34], alpha)
    assert 0.2 < alpha.mean() < 0.8
    one, v4 = read_window(path, window, bands=[4], fill_invalid=False)  # alpha may be asked for explicitly
    np.testing.assert_array_equal(one[:, :34, 0], full[110:160, 600:634, 3])
    np.testing.assert_array_equal(v4, valid)  # validity still comes from alpha, not from "band 4 is valid"
    with pytest.raises(RasterError, match=r"RGBA\.uint16\.tif: requested band 5 but file has 4 bands"):
        read_window(path, window, bands=(1, 5))
    with pytest.raises(RasterError, match="numbered from 1"):
        read_window(path, window, bands=(0,))


def test_nodata_value_collar_is_invalid(data_dir: Path) -> None:
    path = data_dir / "rasterio" / "RGB.byte.tif"
    full, _ = _full(path)
    px, valid = read_window(path, Window(0, 0, 718, 791))
    collar = (full == 0).all(axis=2)
    assert collar.mean() > 0.2
    np.testing.assert_array_equal(valid, ~collar)
    shade = data_dir / "rasterio" / "shade.tif"  # nodata 255, single band
    spx, svalid = read_window(shade, Window(0, 0, 1024, 1024))
    with rasterio.open(shade) as ds:
        np.testing.assert_array_equal(svalid, ds.read(1) != 255)


def test_float_nodata_value_and_nan(tmp_path: Path, data_dir: Path) -> None:
    path = data_dir / "rasterio" / "float_raster_with_nodata.tif"
    with rasterio.open(path) as ds:
        ref, nodata = ds.read(1), ds.nodata
    px, valid = read_window(path, Window(-1, -1, 14, 15), fill=-1)
    np.testing.assert_array_equal(valid[1:13, 1:14], ref != nodata)
    assert (~valid).sum() > 2 * 14 + 2 * 13  # some nodata inside too
    assert (px[~valid] == -1).all() and px.dtype == np.float32

    data = np.random.default_rng(0).random((2, 40, 50), dtype=np.float32)
    data[1, 5:10, 5:10] = np.nan  # NaN in one band only
    data[0, 20, 30] = np.nan
    nan_tif = write_tif(tmp_path / "nan.tif", data)  # no nodata value declared
    px, valid = read_window(nan_tif, Window(0, 0, 40, 50), fill=0)
    expected = ~np.isnan(data).any(axis=0)
    np.testing.assert_array_equal(valid, expected)
    assert not np.isnan(px).any()
    np.testing.assert_array_equal(px[valid], data.transpose(1, 2, 0)[valid])
    px_keep, _ = read_window(nan_tif, Window(0, 0, 40, 50), fill=0, fill_invalid=False)
    assert not np.isnan(px_keep).any()  # NaN never reaches the caller
    _, valid_b0 = read_window(nan_tif, Window(0, 0, 40, 50), bands=[1])
    assert valid_b0[5:10, 5:10].all() and not valid_b0[20, 30]


def test_inf_and_nan_pixels_are_invalid(tmp_path: Path, data_dir: Path) -> None:
    """Non-finite values are nodata like NaN: invalid, and replaced even when invalid pixels are kept."""
    src = data_dir / "rasterio" / "float_raster_with_nodata.tif"
    with rasterio.open(src) as ds:
        data, nodata = ds.read(), ds.nodata
    data[0, 2, 3], data[0, 4, 5], data[0, 6, 7] = np.inf, -np.inf, np.nan
    path = write_tif(tmp_path / "inf.tif", data, nodata=nodata)
    px, valid = read_window(path, Window(0, 0, *data.shape[1:]), fill=-1)
    expected = (data[0] != nodata) & np.isfinite(data[0])
    np.testing.assert_array_equal(valid, expected)
    assert not valid[2, 3] and not valid[4, 5] and not valid[6, 7]
    assert np.isfinite(px).all() and (px[~valid] == -1).all()
    kept, _ = read_window(path, Window(0, 0, *data.shape[1:]), fill=-1, fill_invalid=False)
    assert np.isfinite(kept).all()
    _, small = raster.read_overview(path)
    assert not small[2, 3] and not small[4, 5]


@pytest.mark.parametrize("internal", [True, False], ids=["internal", "external-msk"])
def test_mask_band(tmp_path: Path, internal: bool) -> None:
    data = np.full((3, 60, 70), 9, dtype=np.uint8)
    m = np.ones((60, 70), bool)
    m[10:30, 20:50] = False
    path = write_tif(tmp_path / "masked.tif", data, mask=m, internal_mask=internal)
    assert (tmp_path / "masked.tif.msk").exists() != internal
    _, valid = read_window(path, Window(-5, -5, 70, 80))
    np.testing.assert_array_equal(valid[5:65, 5:75], m)
    assert not valid[:5].any() and not valid[:, 75:].any()


def test_read_overview(data_dir: Path) -> None:
    path = data_dir / "kampala" / "scene" / "kampala_z21_image.tif"
    px, valid = raster.read_overview(path, max_size=300)
    assert px.shape == (200, 300, 3) and px.dtype == np.uint8 and valid.all()
    with rasterio.open(path) as ds:
        ref = ds.read(out_shape=(3, 200, 300)).transpose(1, 2, 0)
    np.testing.assert_array_equal(px, ref)
    small, svalid = raster.read_overview(data_dir / "rasterio" / "RGB.byte.tif", max_size=2000, bands=[2])
    assert small.shape == (718, 791, 1) and 0.2 < (~svalid).mean() < 0.6


def test_normalise_uint16_in_float32() -> None:
    px = np.array([[[65535, 0, 1000]]], dtype=np.uint16)
    out = normalise(px, [60000.0, 100.0, 1000.0], [100.0, 2.0, 10.0])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [55.35, -50.0, 0.0], rtol=1e-6)
    assert normalise(px, 0, 1).max() == 65535.0
    with pytest.raises(ValueError, match="std"):
        normalise(px, 0, [1, 0, 1])
    with pytest.raises(ValueError, match="bands"):
        normalise(px, [1, 2], 1)


def test_normalise_any_memory_layout_the_same(data_dir: Path) -> None:
    """A band-planar read moved to bands-last (rasterio's usual `np.moveaxis(ds.read(), 0, -1)`) is a
    strided view; it normalises exactly as its contiguous copy (it once came back unnormalised, so a
    TilePredictor tile looked as if it depended on its batch-mates)."""
    planar = np.random.default_rng(1).integers(0, 255, (3, 40, 50)).astype(np.uint8)
    view = np.moveaxis(planar, 0, -1)[None]
    assert not view.flags.c_contiguous
    mean, std = [90.0, 100.0, 110.0], [40.0, 50.0, 60.0]
    expected = (view.astype(np.float32) - np.float32(mean)) / np.float32(std)
    np.testing.assert_array_equal(normalise(view, mean, std), expected)
    np.testing.assert_array_equal(normalise(view, mean, std), normalise(np.ascontiguousarray(view), mean, std))
    np.testing.assert_array_equal(normalise(view[:, ::2, ::3], mean, std), expected[:, ::2, ::3])


def test_check_bands_and_fill_validation(data_dir: Path) -> None:
    info = open_info(data_dir / "rasterio" / "shade.tif")
    assert check_bands(info, None) == (1,)
    assert check_bands(info, [1, 1, 1]) == (1, 1, 1)  # grey as 3 channels is allowed
    with pytest.raises(RasterError, match="shade.tif: requested band 2 but file has 1 band$"):
        check_bands(info, [2])
    with pytest.raises(RasterError, match="integers"):
        check_bands(info, [1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="does not fit"):
        read_window(info.path, Window(0, 0, 4, 4), fill=-1)
    with pytest.raises(ValueError, match="no pixels"):
        read_window(info.path, Window(0, 0, 0, 4))


# ------------------------------------------------------------------------------------------- bad inputs


def _make_bad_files(folder: Path, data_dir: Path) -> dict[str, str]:
    """Bad inputs in `folder`, as {file name: expected message fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.tif").write_bytes(b"")
    (folder / "text.tif").write_text("this is not an image\n")
    kampala = (data_dir / "kampala" / "scene" / "kampala_z21_image.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(kampala[: len(kampala) // 2])
    small = (data_dir / "rasterio" / "RGB.byte.tif").read_bytes()
    (folder / "cut_header.tif").write_bytes(small[: len(small) // 2])
    os.symlink(folder / "gone.tif", folder / "dangling.tif")
    return {
        "empty.tif": "empty file (0 bytes)",
        "text.tif": "not a readable raster",
        "truncated.tif": "corrupt or truncated",
        "cut_header.tif": "not a readable raster",
        "dangling.tif": "broken symbolic link",
    }


def test_each_bad_input_gives_one_clear_error(tmp_path: Path, data_dir: Path) -> None:
    expected = _make_bad_files(tmp_path, data_dir)
    (tmp_path / "folder.tif").mkdir()
    expected["folder.tif"] = "is a directory"
    expected["missing.tif"] = "no such file"
    for name, fragment in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(RasterError) as err:
            open_info(path)
        assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value), str(err.value)
        if name != "truncated.tif":  # its first tiles survive; see below
            with pytest.raises(RasterError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
                read_window(path, Window(0, 0, 8, 8))
    # the truncated file opens (its header is intact): without the probe the read of a lost tile fails
    truncated = str(tmp_path / "truncated.tif")
    info = open_info(truncated, probe=False)
    with pytest.raises(RasterError, match=r"truncated\.tif: read failed .*TIFFReadEncodedTile"):
        read_window(truncated, Window(info.height - 256, info.width - 256, 256, 256))


def _attempt_as_nobody(path: str) -> str:
    """open_info in a forked child that dropped root privileges (root ignores chmod 000)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        msg = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            open_info(path)
        except RasterError as e:
            msg = f"RasterError: {e}"
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            msg = f"{type(e).__name__}: {e}"
        finally:
            os.write(wfd, msg.encode())
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_unreadable_file_permission_denied(data_dir: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="tileseg-perm-"))  # outside the root-only pytest tmp dir
    try:
        folder.chmod(0o755)
        path = folder / "secret.tif"
        shutil.copy(data_dir / "rasterio" / "shade.tif", path)
        path.chmod(0)
        if os.geteuid() != 0:
            with pytest.raises(RasterError, match=r"secret\.tif: permission denied"):
                open_info(path)
        else:
            assert open_info(path).bands == 1  # root reads it regardless of the mode bits
            out = _attempt_as_nobody(str(path))
            assert out == f"RasterError: {path}: permission denied", out
            folder.chmod(0o700)  # now the directory cannot be searched either
            out = _attempt_as_nobody(str(path))
            assert out == f"RasterError: {path}: permission denied", out
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_directory_with_bad_files_still_reads_good_ones(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "inputs"
    bad = _make_bad_files(folder, data_dir)
    shutil.copy(data_dir / "rasterio" / "RGB.byte.tif", folder / "RGB.byte.tif")
    shutil.copy(data_dir / "rasterio" / "shade.tif", folder / "shade.tif")  # 1 band
    write_tif(folder / "two_bands.tif", np.ones((2, 20, 20), np.uint8))
    (folder / "sub").mkdir()
    write_tif(folder / "sub" / "rgb.tif", np.ones((3, 20, 20), np.uint8))
    (folder / "notes.txt").write_text("hello")
    (folder / "RGB.byte.tif.aux.xml").write_text("<PAMDataset/>")
    bad["shade.tif"] = "shade.tif: requested band 2 but file has 1 band"
    bad["two_bands.tif"] = "two_bands.tif: requested band 3 but file has 2 bands"
    paths, skipped = discover([str(folder)])
    assert [os.path.basename(p) for p, _ in skipped] == ["RGB.byte.tif.aux.xml", "notes.txt"]

    data, errors = {}, {}
    for p in paths:  # what a job does: every file either yields pixels or one RasterError
        try:
            open_info(p)
            px, _ = read_window(p, Window(-16, -16, 64, 64), bands=(1, 2, 3))
            data[os.path.relpath(p, folder)] = px.shape
        except RasterError as e:
            errors[os.path.relpath(p, folder)] = str(e)
    assert data == {"RGB.byte.tif": (64, 64, 3), "sub/rgb.tif": (64, 64, 3)}
    assert set(errors) == set(bad)
    for name, fragment in bad.items():
        assert errors[name].startswith(f"{folder / name}: ") and fragment in errors[name], errors[name]


# ---------------------------------------------------------------------------------- open-dataset cache


def test_read_window_sees_a_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "changing.tif"
    write_tif(path, np.full((1, 32, 32), 1, np.uint8))
    assert (read_window(path, Window(0, 0, 4, 4))[0] == 1).all()
    time.sleep(0.05)  # past the file system's timestamp granularity
    write_tif(path, np.full((1, 32, 32), 2, np.uint8))
    assert (read_window(path, Window(0, 0, 4, 4))[0] == 2).all()
    raster.clear_cache()
    path.unlink()
    with pytest.raises(RasterError, match="no such file"):
        read_window(path, Window(0, 0, 4, 4))


def test_threads_read_one_image_concurrently(data_dir: Path) -> None:
    path = data_dir / "rasterio" / "RGB.byte.tif"
    windows = [Window(r, c, 96, 96) for r in range(-32, 718, 80) for c in range(-32, 791, 80)]
    sequential = [read_window(path, w) for w in windows]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda w: read_window(path, w), windows))
    for (p1, v1), (p2, v2) in zip(sequential, threaded, strict=True):
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_array_equal(v1, v2)
