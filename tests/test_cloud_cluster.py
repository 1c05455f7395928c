"""The job on a real multi-node Ray cluster (`ray.cluster_utils.Cluster`) writing to the local S3 server.

The cluster's nodes are started WITHOUT the S3 variables, so its workers reach the endpoint only through
what the job passes them (its runtime_env). One cluster for the module: a head and two worker nodes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import zarr
from s3server import SECRET_KEY
from test_cluster import _crop, _env, _expected_mask, _kill_tree

from tileseg import store
from tileseg.uri import CLOUD_ENV_VARS

pytestmark = pytest.mark.slow  # a real three-node Ray cluster and several jobs: minutes

GROUP = "kampala_crop"
BUCKET = "tileseg-cluster"
JOB = ["--block", "512", "--chunk", "512", "--quiet", "--actors", "2", "--gpus-per-actor", "0.5"]


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A head (1 CPU) and two worker nodes (1 CPU, 1 logical GPU each), token-authenticated, all files
    in a temp dir of its own; started with no S3 variable in their environment."""
    from ray.cluster_utils import Cluster

    from tileseg.ray_session import refresh_ray_auth

    tmp = tempfile.mkdtemp(prefix="tscc-", dir="/tmp")  # short: Ray's socket paths have a length limit
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TMPDIR", tmp)
    mp.setenv("RAY_AUTH_MODE", "token")
    mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    refresh_ray_auth()
    hidden = {k: os.environ.pop(k) for k in CLOUD_ENV_VARS if k in os.environ}
    try:
        head_args = {"num_cpus": 1, "temp_dir": os.path.join(tmp, "ray"), "include_dashboard": False}
        c = Cluster(initialize_head=True, head_node_args=head_args)
        c.add_node(num_cpus=1, num_gpus=1)
        c.add_node(num_cpus=1, num_gpus=1)
        c.wait_for_nodes()
    finally:
        os.environ.update(hidden)
    try:
        yield c
    finally:
        import ray

        ray.shutdown()
        c.shutdown()
        _kill_tree(None, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        mp.undo()
        refresh_ray_auth()


@pytest.fixture(scope="module")
def scene(s3_server, data_dir, tmp_path_factory):
    """A 1024x1024 crop of the Kampala scene (four blocks), on disk and in the bucket."""
    src = data_dir / "kampala" / "scene" / "kampala_z21_image.tif"
    local = _crop(src, tmp_path_factory.mktemp("cc") / f"{GROUP}.tif", 1024, 1024)
    url = s3_server.upload(local, f"{s3_server.bucket(BUCKET)}/scenes/{GROUP}.tif")
    return {"local": local, "url": url}


@pytest.fixture(scope="module")
def expected(scene, tiny_model_path) -> np.ndarray:
    return _expected_mask(scene["local"], tiny_model_path)


def _mask(out: str) -> np.ndarray:
    return zarr.open_group(out, mode="r")[GROUP]["mask"][:]


def _summary(s3_server, key: str) -> dict:
    return json.loads(s3_server.client().get_object(Bucket=BUCKET, Key=f"{key}/.tileseg/summary.json")["Body"].read())


def test_a_local_out_is_refused_on_a_cluster_and_shared_fs_lets_it_run(cluster, scene, tiny_model_path, tmp_path,
                                                                       capsys):  # fmt: skip
    from tileseg.cli import main

    out = tmp_path / "local.zarr"
    args = ["segment", str(scene["local"]), "--out", str(out), "--model", str(tiny_model_path),
            "--address", cluster.address, "--block", "1024", "--chunk", "1024", "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "3 nodes" in line and "s3://" in line and "--shared-fs" in line, err
    assert not out.exists()  # nothing written, no lock taken

    assert main([*args, "--shared-fs"]) == 0  # every node of this cluster sees this machine's disk
    assert zarr.open_group(str(out), mode="r")[GROUP].attrs["complete"] is True


def test_worker_node_removed_mid_job_in_the_bucket(cluster, scene, expected, tiny_model_path, s3_server):
    """One of the two worker nodes is removed while blocks remain; the mask equals a clean run's."""
    from tileseg.segment import segment

    out = f"s3://{BUCKET}/killed.zarr"
    doomed = next(n for n in cluster.worker_nodes)
    killed = threading.Event()
    done_at_kill: list[int] = []

    def kill_when_started() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed.is_set():
            try:
                done = store.done_blocks(out, GROUP)
            except Exception:  # the store is not there yet
                done = set()
            if done:
                cluster.remove_node(doomed, allow_graceful=False)
                done_at_kill.append(len(done))
                killed.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    try:
        summary = segment(
            inputs=[scene["url"]], out=out, model=tiny_model_path, block=512, chunk=512, actors=2,
            gpus_per_actor=0.5, address=cluster.address, progress=False,
        )  # fmt: skip
    finally:
        killed.set()
        killer.join(timeout=30)
    assert done_at_kill and done_at_kill[0] < 4, "the node must die while blocks are still to do"
    assert summary.ok, summary.images
    assert summary.images[0].blocks_run == 4
    np.testing.assert_array_equal(_mask(out), expected)
    assert SECRET_KEY not in json.dumps(_summary(s3_server, "killed.zarr"))
    cluster.add_node(num_cpus=1, num_gpus=1)  # two worker nodes again for the next test
    cluster.wait_for_nodes()


def test_driver_killed_then_resumed_in_the_bucket(cluster, scene, expected, tiny_model_path, s3_server):
    """A driver killed mid-job; `--resume` redoes only the blocks whose flags are missing in the bucket."""
    tmp = tempfile.mkdtemp(prefix="tsccd-", dir="/tmp")
    env = _env(tmp) | {"RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]}  # the cluster's token
    out = f"s3://{BUCKET}/resumed.zarr"
    cmd = [sys.executable, "-m", "tileseg.cli", "segment", scene["url"], "--out", out, "--model",
           str(tiny_model_path), "--address", cluster.address, *JOB]  # fmt: skip
    driver = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        done: set[int] = set()
        while time.monotonic() < deadline and driver.poll() is None:
            try:
                done = store.done_blocks(out, GROUP)
            except Exception:
                done = set()
            if done:
                break
            time.sleep(0.1)
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        os.killpg(driver.pid, signal.SIGKILL)
        first = driver.stdout.read().decode()
    finally:
        _kill_tree(driver, tmp)
    time.sleep(5)  # the job's tasks on the cluster are stopped once Ray sees its driver gone
    done_before = store.done_blocks(out, GROUP)
    assert 1 <= len(done_before) < 4

    try:
        resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    finally:
        _kill_tree(None, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report = _summary(s3_server, "resumed.zarr")["images"][0]
    assert report["blocks_resumed"] == len(done_before)
    assert report["blocks_run"] == 4 - len(done_before)
    np.testing.assert_array_equal(_mask(out), expected)
    assert SECRET_KEY not in first + resumed.stdout + resumed.stderr
