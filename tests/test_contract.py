"""The store contract: --overwrite deletes only tileseg stores, one writer at a time, resume names differences."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tileseg import contract
from tileseg.errors import StoreError
from tileseg.store import create_store


def _store(path):
    create_store(str(path), {"note": "x"})
    return path


def test_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "scene.tif").write_bytes(b"image")
    (data / "notes.txt").write_text("unrelated")
    with pytest.raises(StoreError, match="not a tileseg store"):
        contract.check_overwrite(data, [str(data)])
    with pytest.raises(StoreError, match="not a tileseg store"):
        contract.clear_store(data)
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "scene.tif"]


def test_overwrite_refuses_a_link_to_a_foreign_directory(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    (tmp_path / "out.zarr").symlink_to(tmp_path / "photos")
    with pytest.raises(StoreError, match="not a tileseg store"):
        contract.check_overwrite(tmp_path / "out.zarr", [])
    assert (tmp_path / "photos" / "a.jpg").exists()


def test_overwrite_refuses_a_store_that_holds_an_input(tmp_path):
    out = _store(tmp_path / "run.zarr")
    (out / "inside.tif").write_bytes(b"x")
    with pytest.raises(StoreError, match="would delete the input"):
        contract.check_overwrite(out, [str(out / "inside.tif")])
    with pytest.raises(StoreError, match="would delete the input"):
        contract.check_overwrite(out, [str(out)])
    contract.check_overwrite(out, [str(tmp_path / "elsewhere.tif"), "s3://bucket/a.tif"])


def test_clear_store_empties_a_tileseg_store_and_keeps_a_link(tmp_path):
    real = _store(tmp_path / "real.zarr")
    (tmp_path / "link.zarr").symlink_to(real)
    contract.clear_store(tmp_path / "link.zarr")
    assert (tmp_path / "link.zarr").is_symlink() and list(real.iterdir()) == []


def test_resume_needs_an_existing_tileseg_store(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        contract.check_resume(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a tileseg store"):
        contract.check_resume(tmp_path / "plain")
    contract.check_resume(_store(tmp_path / "ok.zarr"))


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    out = _store(tmp_path / "run.zarr")
    with contract.StoreLock(out):
        owner = json.loads(Path(contract.run_file(out, contract.LOCK_FILE)).read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(StoreError, match=f"another run is writing this store \\(pid {os.getpid()}"):
            contract.StoreLock(out).acquire()
    assert not Path(contract.run_file(out, contract.LOCK_FILE)).exists()

    # A lock left by a process that has died on this host is stale.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = Path(contract.run_file(out, contract.LOCK_FILE))
    import socket

    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    with contract.StoreLock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    # One from another host is never guessed about.
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(StoreError, match="pid 1 on elsewhere"):
        contract.StoreLock(out).acquire()


def test_plan_difference_names_what_changed():
    old = {"tile": 256, "overlap": 64, "blend": "gaussian", "model": {"sha256": "aa", "path": "m.keras"}}
    new = {"tile": 256, "overlap": 32, "blend": "hann", "model": {"sha256": "bb", "path": "m.keras"}}
    text = contract.plan_difference(old, new)
    assert "overlap 64 -> 32" in text and "blend 'gaussian' -> 'hann'" in text and "model: sha256 'aa' -> 'bb'" in text
    assert contract.plan_difference(old, dict(old)) == ""


def test_run_files_do_not_disturb_group_listing(tmp_path):
    import warnings

    import zarr

    out = _store(tmp_path / "run.zarr")
    contract.write_run_file(out, contract.SUMMARY_FILE, "{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = [k for k, _ in zarr.open_group(str(out), mode="r").groups()]
    assert names == [contract.RUN_GROUP]


def test_resume_with_another_plan_is_refused_naming_the_difference(tmp_path):
    from tileseg.raster import ImageInfo
    from tileseg.store import create_image_group

    out = _store(tmp_path / "run.zarr")
    info = ImageInfo(
        path="a.tif",
        width=64,
        height=48,
        bands=3,
        dtype="uint8",
        crs=None,
        transform=(1, 0, 0, 0, -1, 0),
        nodata=None,
        driver="GTiff",
    )
    plan = {"tile": 32, "overlap": 8, "blend": "gaussian", "model": {"sha256": "aa"}}
    kw = dict(classes=["bg", "fg"], chunk=32, num_blocks=4)
    create_image_group(str(out), "a", info, plan=plan, **kw)
    create_image_group(str(out), "a", info, plan=dict(plan), **kw)  # the same plan: resumable
    with pytest.raises(StoreError, match="planned differently.*blend 'gaussian' -> 'hann'"):
        create_image_group(str(out), "a", info, plan={**plan, "blend": "hann"}, **kw)
    with pytest.raises(StoreError, match="model: sha256 'aa' -> 'bb'"):
        create_image_group(str(out), "a", info, plan={**plan, "model": {"sha256": "bb"}}, **kw)


def test_the_contract_holds_in_object_storage(s3_server, tmp_path):
    bucket = s3_server.bucket("contract")
    foreign = f"{bucket}/photos"
    (tmp_path / "a.jpg").write_bytes(b"x")
    s3_server.upload(tmp_path / "a.jpg", f"{foreign}/a.jpg")
    with pytest.raises(StoreError, match="not a tileseg store"):
        contract.check_overwrite(foreign, [])
    with pytest.raises(StoreError, match="not a tileseg store"):
        contract.clear_store(foreign)
    with pytest.raises(StoreError, match="no such store"):
        contract.check_resume(f"{bucket}/missing.zarr")

    out = f"{bucket}/run.zarr"
    create_store(out)
    assert contract.is_tileseg_store(out) and contract.exists(out)
    with pytest.raises(StoreError, match="would delete the input"):
        contract.check_overwrite(out, [f"{out}/scene.tif"])
    with contract.StoreLock(out):
        with pytest.raises(StoreError, match=f"another run is writing this store \\(pid {os.getpid()}"):
            contract.StoreLock(out).acquire()
    contract.write_run_file(out, contract.SUMMARY_FILE, '{"ok": true}')
    assert json.loads(contract.read_run_file(out, contract.SUMMARY_FILE)) == {"ok": True}
    contract.clear_store(out)
    assert not contract.exists(out)
    assert s3_server.client().list_objects_v2(Bucket="contract", Prefix="photos/")["KeyCount"] == 1
