"""Out-of-core evaluation: metrics against NumPy, alignment across CRSs, name matching, errors, pictures."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import cv2
import matplotlib.image as mpimg
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

from tileseg import evaluate as ev
from tileseg import store as tstore
from tileseg.grid import Window
from tileseg.jsonio import json_safe
from tileseg.raster import ImageInfo, open_info

UTM = CRS.from_epsg(32636)
CLASSES = ["background", "building", "road", "water", "tree"]


# ------------------------------------------------------------------------------------------ helpers


def write_store(
    path: Path,
    name: str,
    mask: np.ndarray,
    *,
    crs: CRS | str | None,
    transform: Affine,
    classes: list[str],
    chunk: int = 64,
    source: str | None = None,
) -> None:
    """Write one image group through tileseg.store, block by block, as `tileseg segment` does."""
    h, w = mask.shape
    wkt = None if crs is None else CRS.from_user_input(crs).to_wkt()
    info = ImageInfo(
        path=source or f"/nonexistent/{name}.tif",
        height=h,
        width=w,
        bands=3,
        dtype="uint8",
        crs=wkt,
        transform=tuple(transform)[:6],
        nodata=None,
        driver="GTiff",
    )
    blocks = [(r, c) for r in range(0, h, chunk) for c in range(0, w, chunk)]
    tstore.create_image_group(str(path), name, info, classes=classes, chunk=chunk, num_blocks=len(blocks))
    for i, (r, c) in enumerate(blocks):
        bh, bw = min(chunk, h - r), min(chunk, w - c)
        tstore.write_block(str(path), name, Window(r, c, bh, bw), mask[r : r + bh, c : c + bw], None, i)
    tstore.finish_image(str(path), name, {})


def write_tif(
    path: Path, data: np.ndarray, *, crs: CRS | str | None, transform: Affine | None, nodata: float | None = 255
) -> Path:
    """A tiled single-band GeoTIFF (no CRS / no transform when None)."""
    profile = dict(
        driver="GTiff",
        height=data.shape[0],
        width=data.shape[1],
        count=1,
        dtype=data.dtype,
        nodata=nodata,
        tiled=True,
        blockxsize=128,
        blockysize=128,
    )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def reference_metrics(truth: np.ndarray, pred: np.ndarray, k: int, ignore: set[int]) -> dict:
    """Independent NumPy reference: boolean counting per class (no bincount, no shared code)."""
    valid = ~np.isin(truth, list(ignore)) & (pred != 255)
    cm = np.array([[int(np.sum(valid & (truth == i) & (pred == j))) for j in range(k)] for i in range(k)])
    no_pred = int(np.sum(~np.isin(truth, list(ignore)) & (pred == 255)))
    out = {"cm": cm, "per_class": [], "no_prediction": no_pred}
    ious = []
    for c in range(k):
        tp = int(np.sum(valid & (truth == c) & (pred == c)))
        fp = int(np.sum(valid & (truth != c) & (pred == c)))
        fn = int(np.sum(valid & (truth == c) & (pred != c)))
        nan = float("nan")
        iou = tp / (tp + fp + fn) if tp + fp + fn else nan
        out["per_class"].append(
            {
                "iou": iou,
                "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
                "precision": tp / (tp + fp) if tp + fp else nan,
                "recall": tp / (tp + fn) if tp + fn else nan,
                "support": tp + fn,
            }
        )
        if tp + fp + fn:
            ious.append(iou)
    out["pixel_accuracy"] = float(np.sum(valid & (truth == pred)) / np.sum(valid))
    out["mean_iou"] = float(np.mean(ious))
    return out


def assert_matches(got: dict, ref: dict, classes: list[str]) -> None:
    """Every metric of `got` equals the reference (NaN where the reference is undefined)."""
    assert np.array_equal(np.array(got["confusion_matrix"]), ref["cm"])
    assert got["pixel_accuracy"] == pytest.approx(ref["pixel_accuracy"], rel=1e-12)
    assert got["mean_iou"] == pytest.approx(ref["mean_iou"], rel=1e-12)
    assert got["no_prediction"] == ref["no_prediction"]
    for name, r in zip(classes, ref["per_class"], strict=True):
        g = got["per_class"][name]
        assert g["support"] == r["support"]
        for key in ("iou", "dice", "precision", "recall"):
            if math.isnan(r[key]):
                assert math.isnan(g[key]), (name, key)
            else:
                assert g[key] == pytest.approx(r[key], rel=1e-12), (name, key)


def synthetic_pair(seed: int, shape: tuple[int, int] = (300, 260)) -> tuple[np.ndarray, np.ndarray]:
    """Truth in {0,1,2} with nodata holes; prediction = truth with 30 % flips, some 'water' (3), gaps."""
    rng = np.random.default_rng(seed)
    h, w = shape
    truth = rng.choice(np.array([0, 1, 2], np.uint8), size=shape, p=[0.6, 0.3, 0.1])
    truth[10:40, 20:90] = 255  # truth nodata
    pred = truth.copy()
    flip = rng.random(shape) < 0.3
    pred[flip] = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=int(flip.sum()))
    pred[h - 50 :, w - 70 :] = 255  # no prediction written there
    pred[30:35, 80:100] = 255  # overlaps the truth nodata a little
    return truth, pred


@pytest.fixture()
def small_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force one Dask task per 64x64 Zarr chunk so the reduction really sums many partial matrices."""
    monkeypatch.setattr(ev.confusion, "TARGET_BLOCK_PIXELS", 64 * 64)


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_equal_numpy_reference(tmp_path: Path, small_tasks: None) -> None:
    """Two images, a truth directory, every metric per image and overall equals a direct NumPy count."""
    store = tmp_path / "run.zarr"
    tdir = tmp_path / "truth"
    tdir.mkdir()
    pairs = {}
    for i, name in enumerate(["scene_a", "scene_b"]):
        truth, pred = synthetic_pair(i)
        transform = from_origin(500000 + 1000 * i, 40000, 0.5, 0.5)
        write_store(store, name, pred, crs=UTM, transform=transform, classes=CLASSES)
        write_tif(tdir / f"{name}.tif", truth, crs=UTM, transform=transform)
        pairs[name] = (truth, pred)

    res = ev.evaluate(store, tdir, quicklooks=False)

    for name, (truth, pred) in pairs.items():
        got = res["images"][name]
        assert got["alignment"] == "same grid"
        assert_matches(got, reference_metrics(truth, pred, len(CLASSES), {255}), CLASSES)
        # 'water' is only predicted (IoU 0, in the mean); 'tree' is nowhere (undefined, not in the mean)
        assert got["per_class"]["water"]["iou"] == 0.0
        assert math.isnan(got["per_class"]["tree"]["iou"])
        assert "tree" not in got["classes_in_mean"]
        assert got["pixels"] == truth.size
        assert got["ignored"] == int(np.sum(truth == 255))
    both_t = np.concatenate([p[0].ravel() for p in pairs.values()])
    both_p = np.concatenate([p[1].ravel() for p in pairs.values()])
    assert_matches(res["overall"], reference_metrics(both_t, both_p, len(CLASSES), {255}), CLASSES)

    # the written reports carry the same numbers; NaN becomes null in strict JSON
    out = Path(res["out_dir"])
    assert out == tmp_path / "run_eval"
    data = json.loads((out / "metrics.json").read_text())
    assert data["overall"]["confusion_matrix"] == res["overall"]["confusion_matrix"]
    assert data["images"]["scene_a"]["per_class"]["tree"]["iou"] is None
    md = (out / "metrics.md").read_text()
    assert md == res["table"]
    assert "| building |" in md and "mIoU" in md and "| scene_b |" in md
    assert set(res["files"]) >= {"metrics_json", "metrics_md", "confusion_matrix_png", "quicklooks"}


def test_ignore_values_and_truth_nodata_are_excluded(tmp_path: Path, small_tasks: None) -> None:
    """Explicit ignore values leave pixels out, and the truth's own nodata (here 7) always does."""
    truth, pred = synthetic_pair(5)
    truth[200:230, 10:200] = 7
    transform = from_origin(500000, 40000, 0.5, 0.5)
    store = tmp_path / "run.zarr"
    write_store(store, "scene", pred, crs=UTM, transform=transform, classes=CLASSES)
    tif = write_tif(tmp_path / "scene.tif", truth, crs=UTM, transform=transform, nodata=7)

    default = ev.evaluate(store, tif, out_dir=tmp_path / "a", quicklooks=False)["images"]["scene"]
    assert default["ignore"] == [7, 255]
    assert_matches(default, reference_metrics(truth, pred, len(CLASSES), {7, 255}), CLASSES)

    res = ev.evaluate(store, tif, ignore=[0], out_dir=tmp_path / "b", quicklooks=False)["images"]["scene"]
    assert res["ignore"] == [0, 7]  # 255 is no longer ignored: it is out of the class range
    ref = reference_metrics(truth, pred, len(CLASSES), {0, 7, 255})
    assert_matches(res, ref, CLASSES)
    assert np.array(res["confusion_matrix"])[0].sum() == 0
    assert res["truth_out_of_range"] == int(np.sum(truth == 255))


def test_confusion_metrics_edge_cases() -> None:
    """Empty matrices and absent classes give NaN, never a division error or a fake 0/1."""
    m = ev.confusion_metrics(np.zeros((2, 2), np.int64), ["a", "b"])
    assert math.isnan(m["pixel_accuracy"]) and math.isnan(m["mean_iou"])
    m = ev.confusion_metrics(np.array([[5, 0], [0, 0]]), ["a", "b"])
    assert m["mean_iou"] == 1.0 and m["classes_in_mean"] == ["a"]
    assert math.isnan(m["per_class"]["b"]["recall"])


# ------------------------------------------------------------------------------------------ real data, CRSs


@pytest.fixture(scope="module")
def kampala(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Prediction store in EPSG:3857 holding the real Kampala scene mask (the 'perfect' prediction)."""
    tmp = tmp_path_factory.mktemp("kampala")
    scene = data_dir / "kampala" / "scene"
    with rasterio.open(scene / "kampala_z21_mask.tif") as src:
        mask, crs, transform, bounds = src.read(1), src.crs, src.transform, src.bounds
    store = tmp / "pred.zarr"
    write_store(
        store,
        "kampala_z21_image",
        mask,
        crs=crs,
        transform=transform,
        classes=["background", "building"],
        chunk=512,
        source=str(scene / "kampala_z21_image.tif"),
    )
    return {
        "tmp": tmp,
        "store": store,
        "mask": mask,
        "crs": crs,
        "transform": transform,
        "bounds": bounds,
        "scene": scene,
    }


def to_4326(k: dict, path: Path, scale: float, shift_m: float = 0.0) -> Path:
    """The scene mask reprojected (nearest) to EPSG:4326 at `scale` x the default pixel size, shifted east."""
    h, w = k["mask"].shape
    dt, dw, dh = calculate_default_transform(k["crs"], "EPSG:4326", w, h, *k["bounds"])
    dt = dt @ Affine.scale(scale)
    dw, dh = int(dw / scale), int(dh / scale)
    out = np.full((dh, dw), 255, np.uint8)
    reproject(
        k["mask"],
        out,
        src_transform=k["transform"],
        src_crs=k["crs"],
        dst_transform=dt,
        dst_crs="EPSG:4326",
        resampling=Resampling.nearest,
        src_nodata=255,
        dst_nodata=255,
    )
    dt = Affine(dt.a, dt.b, dt.c + shift_m / 111_320.0, dt.d, dt.e, dt.f)  # ~metres -> degrees at the equator
    return write_tif(path, out, crs="EPSG:4326", transform=dt)


def test_truth_in_4326_is_aligned_to_3857_prediction(kampala: dict) -> None:
    """Truth reprojected to EPSG:4326 on a coarser grid scores ~1 against the 3857 scene; shifted, it doesn't.

    The truth grid is 1.37x coarser, so the round trip 3857 -> 4326 -> 3857 (nearest both ways) can only
    move building edges by up to about one pixel: mismatches are confined to the 1-px boundary band, which
    holds 3.6 % of the building pixels of this scene, and a sub-pixel move flips only part of it. So IoU
    must stay above 0.95 (measured: 0.991). A 2 m (~28 px) shift of the same truth must fall far below
    (measured: 0.65), which a misaligned or unwarped read would also produce.
    """
    tmp = kampala["tmp"]
    good = ev.evaluate(
        kampala["store"], to_4326(kampala, tmp / "t4326.tif", 1.37), out_dir=tmp / "good", quicklooks=False
    )
    img = good["images"]["kampala_z21_image"]
    assert img["alignment"].startswith("reprojected from EPSG:4326")
    assert img["per_class"]["building"]["iou"] > 0.95
    assert img["per_class"]["background"]["iou"] > 0.98
    assert img["evaluated"] > 0.95 * kampala["mask"].size  # the whole scene is covered and counted

    # the same grid read directly (no warp) is exact
    same = ev.evaluate(
        kampala["store"], kampala["scene"] / "kampala_z21_mask.tif", out_dir=tmp / "same", quicklooks=False
    )["images"]["kampala_z21_image"]
    assert same["alignment"] == "same grid" and same["mean_iou"] == 1.0

    bad = ev.evaluate(
        kampala["store"], to_4326(kampala, tmp / "shift.tif", 1.37, shift_m=2.0), out_dir=tmp / "bad", quicklooks=False
    )["images"]["kampala_z21_image"]
    assert bad["per_class"]["building"]["iou"] < 0.8
    assert img["per_class"]["building"]["iou"] - bad["per_class"]["building"]["iou"] > 0.2


def test_real_4326_chips_score_against_3857_scene(kampala: dict, data_dir: Path) -> None:
    """Real 256x256 EPSG:4326 label chips, warped onto the 3857 scene, cover exactly their 65536 pixels there
    and agree with the scene's labels (the scene was mosaicked from them); outside a chip is ignored."""
    chips = sorted((data_dir / "kampala" / "train" / "masks").glob("*-21.tif"))[:2]
    assert chips
    for chip in chips:
        res = ev.evaluate(kampala["store"], chip, out_dir=kampala["tmp"] / "chip", quicklooks=False)
        img = res["images"]["kampala_z21_image"]
        assert img["evaluated"] == 256 * 256
        assert img["ignored"] == kampala["mask"].size - 256 * 256
        assert img["pixel_accuracy"] > 0.99


def test_quicklook_and_confusion_png(kampala: dict) -> None:
    """PNGs open, have the announced sizes, are not blank, and colour errors where the truth is shifted."""
    tmp = kampala["tmp"]
    res = ev.evaluate(kampala["store"], to_4326(kampala, tmp / "shift_q.tif", 1.37, shift_m=2.0), out_dir=tmp / "ql")
    info = res["images"]["kampala_z21_image"]["quicklook"]
    assert info["sampled_shape"] == [683, 1024]  # 2048x3072 shrunk to 1024 on the long side
    png = cv2.imread(info["path"], cv2.IMREAD_COLOR)
    assert png is not None and list(png.shape[:2]) == info["png_shape"]
    rgb = cv2.cvtColor(png, cv2.COLOR_BGR2RGB)
    panels = info["panels"]
    assert list(panels) == ["image", "prediction", "errors vs truth"]
    r, c, ph, pw = panels["image"]
    assert (ph, pw) == (683, 1024)
    image = rgb[r : r + ph, c : c + pw].astype(int)
    assert image.std() > 20  # the real photo, not a flat fill
    r, c, ph, pw = panels["errors vs truth"]
    errors = rgb[r : r + ph, c : c + pw].astype(int)

    def share(colour: tuple[int, int, int]) -> float:
        """Fraction of panel pixels dominated by this error colour (blended at 80 % over grey)."""
        target = np.array(colour)
        return float(np.mean(np.abs(errors - target).max(axis=-1) < 60))

    fp = share(ev.ERROR_COLOURS["false positive"])
    fn = share(ev.ERROR_COLOURS["false negative"])
    tp = share(ev.ERROR_COLOURS["correct (foreground)"])
    assert 0.01 < fp < 0.2 and 0.01 < fn < 0.2 and tp > 0.05

    cm = mpimg.imread(res["files"]["confusion_matrix_png"])
    assert cm.ndim == 3 and cm.shape[0] > 200 and cm.shape[1] > 200 and cm[..., :3].std() > 0.05


# ------------------------------------------------------------------------------------------ matching, errors


def test_match_truth_by_name_never_guesses(tmp_path: Path) -> None:
    """Exact, case-insensitive, safe-name and _mask/_image suffix matches; ambiguity is reported."""
    files = [
        tmp_path / n
        for n in [
            "kampala_z21_mask.tif",
            "SCENE_B.tif",
            "tile_c_label.tif",
            "dup_mask.tif",
            "dup-mask.tif",
            "a_image_mask.tif",
            "a_mask.tif",
            "orphan.tif",
        ]
    ]
    groups = {
        "kampala_z21_image": "/x/kampala_z21_image.tif",
        "scene_b": None,
        "tile-c": None,
        "dup": None,
        "a_image": None,
        "lonely": None,
    }
    matches, unmatched, unused, ambiguous = ev.match_truth(groups, files)
    assert {k: v.name for k, v in matches.items()} == {
        "kampala_z21_image": "kampala_z21_mask.tif",
        "scene_b": "SCENE_B.tif",
        "tile-c": "tile_c_label.tif",
        "a_image": "a_image_mask.tif",
    }
    assert unmatched == ["lonely"]
    assert sorted(ambiguous["dup"]) == ["dup-mask.tif", "dup_mask.tif"]
    assert sorted(p.name for p in unused) == ["a_mask.tif", "dup-mask.tif", "dup_mask.tif", "orphan.tif"]


def test_truth_directory_of_real_masks_without_crs_prediction(tmp_path: Path, data_dir: Path) -> None:
    """Zanzibar: images without CRS, masks with; a store of 3 images against the 966-file mask directory."""
    masks = data_dir / "zanzibar" / "masks"
    images = sorted((data_dir / "zanzibar" / "images").glob("*.png"))

    def has_building(image: Path) -> bool:
        path = masks / f"{image.stem}.tif"
        if not path.exists():
            return False
        with rasterio.open(path) as src:
            return bool(src.read(1).any())

    chosen = list(itertools.islice(filter(has_building, images), 3))
    assert len(chosen) == 3
    store = tmp_path / "z.zarr"
    refs = {}
    for i, img in enumerate(chosen):
        info = open_info(img)
        assert info.crs is None
        with rasterio.open(masks / f"{img.stem}.tif") as src:
            truth = src.read(1)
        pred = truth.copy() if i else np.zeros_like(truth)  # the first image predicts no building
        write_store(
            store,
            tstore.group_name(img, set()),
            pred,
            crs=None,
            transform=Affine(*info.transform),
            classes=["background", "building"],
            source=str(img),
        )
        refs[tstore.group_name(img, set())] = reference_metrics(truth, pred, 2, {255})
    # one more image whose mask is not in the directory: reported, drawn without an error panel
    write_store(
        store,
        "not_in_truth",
        np.zeros((64, 64), np.uint8),
        crs=None,
        transform=Affine.identity(),
        classes=["background", "building"],
        source=str(data_dir / "kampala" / "scene" / "kampala_z21_image.tif"),
    )
    res = ev.evaluate(store, masks, out_dir=tmp_path / "out")
    assert sorted(res["images"]) == sorted(refs)
    assert len(res["unmatched_truth"]) == len(list(masks.glob("*.tif"))) - 3
    assert res["unmatched_groups"] == ["not_in_truth"] and res["ambiguous"] == {}
    assert "`not_in_truth`: no truth file matched" in res["table"]
    assert "and 943 more (all in metrics.json)" in res["table"]
    assert set(res["files"]["quicklooks"]) == set(refs) | {"not_in_truth"}
    for name, path in res["files"]["quicklooks"].items():
        png = cv2.imread(path)
        assert png is not None and png.std() > 10
        if name in refs:
            info = res["images"][name]["quicklook"]
            assert list(info["panels"]) == ["image", "prediction", "errors vs truth"]
            assert info["sampled_shape"] == [256, 256]
    for name, ref in refs.items():
        got = res["images"][name]
        assert got["alignment"].startswith("pixel-aligned")
        assert_matches(got, ref, ["background", "building"])
    first = tstore.group_name(chosen[0], set())
    assert res["images"][first]["per_class"]["building"]["recall"] == 0.0


def test_unalignable_grids_raise_clear_errors(tmp_path: Path) -> None:
    """No CRS on one side with another shape, or grids that do not meet: EvaluationError naming the files."""
    truth, pred = synthetic_pair(1, (100, 120))
    transform = from_origin(500000, 40000, 0.5, 0.5)
    store = tmp_path / "run.zarr"
    write_store(store, "scene", pred, crs=UTM, transform=transform, classes=CLASSES)

    nocrs = write_tif(tmp_path / "nocrs.tif", truth[:80, :90], crs=None, transform=None)
    with pytest.raises(ev.EvaluationError, match=r"nocrs\.tif.*truth has no CRS and the shapes differ"):
        ev.evaluate(store, nocrs, out_dir=tmp_path / "o", quicklooks=False)

    far = write_tif(tmp_path / "far.tif", truth, crs=UTM, transform=from_origin(900000, 40000, 0.5, 0.5))
    with pytest.raises(ev.EvaluationError, match=r"far\.tif.*do not intersect"):
        ev.evaluate(store, far, out_dir=tmp_path / "o", quicklooks=False)

    # another CRS, also far away (the prediction is in Uganda-ish UTM, the truth over Europe)
    eu = write_tif(tmp_path / "eu.tif", truth, crs="EPSG:4326", transform=from_origin(10.0, 50.0, 1e-5, 1e-5))
    with pytest.raises(ev.EvaluationError, match=r"eu\.tif.*do not intersect"):
        ev.evaluate(store, eu, out_dir=tmp_path / "o", quicklooks=False)

    # no CRS but the same shape: compared pixel for pixel, with a warning
    same = write_tif(tmp_path / "same.tif", truth, crs=None, transform=None)
    with pytest.warns(ev.EvaluationWarning, match="truth has no CRS"):
        res = ev.evaluate(store, same, out_dir=tmp_path / "o", quicklooks=False)
    assert_matches(res["images"]["scene"], reference_metrics(truth, pred, len(CLASSES), {255}), CLASSES)

    # a directory where nothing matches
    empty = tmp_path / "nomatch"
    empty.mkdir()
    write_tif(empty / "other.tif", truth, crs=UTM, transform=transform)
    with pytest.raises(ev.EvaluationError, match="no truth"):
        ev.evaluate(store, empty, out_dir=tmp_path / "o", quicklooks=False)


def test_partial_overlap_other_grid_same_crs(tmp_path: Path, small_tasks: None) -> None:
    """Truth on a shifted 2x coarser grid in the same CRS: warped (nearest), outside ignored, exact counts."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 2, (40, 50), dtype=np.uint8)
    t_transform = from_origin(500010, 39990, 1.0, 1.0)  # 20 px right and down of the prediction
    tif = write_tif(tmp_path / "t.tif", coarse, crs=UTM, transform=t_transform, nodata=None)
    pred = rng.integers(0, 2, (150, 160), dtype=np.uint8)
    store = tmp_path / "run.zarr"
    write_store(
        store,
        "scene",
        pred,
        crs=UTM,
        transform=from_origin(500000, 40000, 0.5, 0.5),
        classes=["background", "building"],
    )
    # expected truth on the prediction grid: each 0.5 m pixel takes the 1 m truth pixel containing its centre
    on_grid = np.full(pred.shape, 255, np.uint8)
    on_grid[20:100, 20:120] = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
    res = ev.evaluate(store, tif, out_dir=tmp_path / "o", quicklooks=False)["images"]["scene"]
    assert res["alignment"].startswith("same CRS, other grid")
    assert_matches(res, reference_metrics(on_grid, pred, 2, {255}), ["background", "building"])
    assert res["evaluated"] == 80 * 100


# ------------------------------------------------------------------------------------------ schedulers, CLI


def _ray_leftovers(pid: int) -> set[str]:
    """Entries of Ray's default /tmp/ray that a Ray started by process `pid` made (sessions carry the pid)."""
    root = Path("/tmp/ray")
    if not root.is_dir():
        return set()
    mine = {n for n in os.listdir(root) if n.endswith(f"_{pid}")}
    latest = root / "session_latest"
    if latest.is_symlink() and os.readlink(latest).endswith(f"_{pid}"):
        mine.add("session_latest")
    return mine


@pytest.mark.slow  # starting Ray takes 10-25 s on a 2-core machine
def test_ray_scheduler_runs_in_a_ray_session_that_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate(scheduler='ray') starting its own Ray: the threads scheduler's exact result, no Ray left
    running, no auth token in ~/.ray and no session in /tmp/ray (RaySession keeps both in a temp dir)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("needs to start its own Ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # never someone else's cluster
    truth, pred = synthetic_pair(11, (150, 170))
    transform = from_origin(500000, 40000, 0.5, 0.5)
    store = tmp_path / "run.zarr"
    write_store(store, "scene", pred, crs=UTM, transform=transform, classes=CLASSES, chunk=32)
    tif = write_tif(tmp_path / "scene.tif", truth, crs=UTM, transform=transform)
    threads = ev.evaluate(store, tif, out_dir=tmp_path / "t", quicklooks=False)

    real_home_ray = Path(os.path.expanduser("~")) / ".ray"
    before_real = sorted(os.listdir(real_home_ray)) if real_home_ray.is_dir() else None
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    before_tmp = _ray_leftovers(os.getpid())
    on_ray = ev.evaluate(store, tif, out_dir=tmp_path / "r", scheduler="ray", quicklooks=False)

    assert not ray.is_initialized()  # the session it started is shut down
    assert json_safe(on_ray["images"]) == json_safe(threads["images"])
    assert json_safe(on_ray["overall"]) == json_safe(threads["overall"])
    assert threads["overall"]["evaluated"] > 0
    assert os.listdir(home) == []  # no ~/.ray (auth token) under the HOME Ray saw
    assert (sorted(os.listdir(real_home_ray)) if real_home_ray.is_dir() else None) == before_real
    assert _ray_leftovers(os.getpid()) - before_tmp == set()


@pytest.mark.slow  # starting Ray takes 10-25 s on a 2-core machine
def test_ray_scheduler_gives_the_same_counts(tmp_path: Path, small_tasks: None) -> None:
    """scheduler='ray' runs the same graph on Ray (a 1-CPU local instance) with identical results."""
    ray = pytest.importorskip("ray")
    truth, pred = synthetic_pair(7, (130, 140))
    transform = from_origin(500000, 40000, 0.5, 0.5)
    store = tmp_path / "run.zarr"
    write_store(store, "scene", pred, crs=UTM, transform=transform, classes=CLASSES)
    t4326 = tmp_path / "t.tif"
    bounds = transform_bounds(UTM, "EPSG:4326", 500000, 40000 - 65, 500070, 40000)
    write_tif(
        t4326,
        np.ones((50, 60), np.uint8),
        crs="EPSG:4326",
        transform=from_origin(bounds[0], bounds[3], (bounds[2] - bounds[0]) / 60, (bounds[3] - bounds[1]) / 50),
    )
    threads = ev.evaluate(store, t4326, out_dir=tmp_path / "t", quicklooks=False)
    # a private 1-CPU Ray (never someone else's cluster); evaluate() leaves an initialised Ray running
    from tileseg.ray_session import RaySession

    with RaySession(num_cpus=1):  # a Ray already running: evaluate() uses it and leaves it running
        on_ray = ev.evaluate(store, t4326, out_dir=tmp_path / "r", scheduler="ray", quicklooks=False)
        assert ray.is_initialized()
    assert on_ray["images"]["scene"]["confusion_matrix"] == threads["images"]["scene"]["confusion_matrix"]
    assert threads["overall"]["evaluated"] > 0


def test_command_line_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tileseg evaluate`: table printed, exit 0; a missing truth is one line, exit 2."""
    truth, pred = synthetic_pair(2, (64, 64))
    transform = from_origin(500000, 40000, 0.5, 0.5)
    store = tmp_path / "run.zarr"
    write_store(store, "scene", pred, crs=UTM, transform=transform, classes=CLASSES)
    tif = write_tif(tmp_path / "scene.tif", truth, crs=UTM, transform=transform)
    from tileseg.cli import main

    assert main(["evaluate", str(store), "--truth", str(tif), "--out", str(tmp_path / "o"), "--no-quicklooks"]) == 0
    assert "| building |" in capsys.readouterr().out
    assert main(["evaluate", str(store), "--truth", str(tmp_path / "missing.tif")]) == 2
    assert "truth not found" in capsys.readouterr().err


def test_bench_small_run_is_exact() -> None:
    """The memory benchmark's generator and checker agree at a small size (the 20000^2 run is manual)."""
    import importlib.util

    path = Path(__file__).parents[1] / "bench" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("bench_evaluate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(1500, chunk=512, quicklooks=False)
    assert res["correct"] and res["peak_rss_mib"] < 2048


def test_options_are_checked_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad options fail naming the option, missing files naming the file, and no report directory appears;
    `tileseg evaluate` (generated from EvaluateOptions) parses --ignore/--classes as comma lists."""
    from tileseg import cli
    from tileseg.errors import OptionError

    truth, pred = synthetic_pair(3, (64, 64))
    transform = from_origin(500000, 40000, 0.5, 0.5)
    store = tmp_path / "run.zarr"
    write_store(store, "scene", pred, crs=UTM, transform=transform, classes=CLASSES)
    tif = write_tif(tmp_path / "scene.tif", truth, crs=UTM, transform=transform)
    out = tmp_path / "o"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for kwargs, flag in [
        ({"scheduler": "dask"}, "--scheduler"),
        ({"classes": ["a", "a"]}, "--classes"),
        ({"ignore": [float("nan")]}, "--ignore"),
        ({"out_dir": a_file}, "--out"),
    ]:
        with pytest.raises(OptionError, match=f"^{flag}: "):
            ev.evaluate(store, tif, **{"out_dir": out, **kwargs})
    with pytest.raises(ev.EvaluationError, match="truth not found: .*missing.tif"):
        ev.evaluate(store, tmp_path / "missing.tif", out_dir=out)
    assert not out.exists() and not (tmp_path / "run_eval").exists()

    argv = ["evaluate", str(store), "--truth", str(tif), "--out", str(out), "--no-quicklooks", "--ignore", "0,255"]
    assert cli.main(argv) == 0
    assert "| building |" in capsys.readouterr().out
    data = json.loads((out / "metrics.json").read_text())
    assert (
        data["images"]["scene"]["ignore"] == [0, 255]
        and data["images"]["scene"]["per_class"]["background"]["support"] == 0
    )
    assert cli.main(["evaluate", str(store), "--truth", str(tif), "--scheduler", "ray", "--out", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out: {a_file} exists and is not a directory"
