"""The job on real Ray clusters: `ray job submit` to a local head, a killed worker node, a killed driver.

Each test stops only the Ray processes it started (never `ray stop`, which would stop every Ray on
the machine), and keeps everything Ray writes in a temp dir of its own, removed afterwards: Ray's default
temp dir is pointed there too (RAY_TMPDIR), so nothing lands in /tmp/ray, and tokens come from the
environment, so nothing is read from or written to ~/.ray.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import rasterio
import zarr

from tileseg import raster, store
from tileseg.grid import Window
from tileseg.predict import TilePredictor, to_mask
from tileseg.stitch import predict_array

pytestmark = pytest.mark.slow  # real multi-process Ray clusters: about 2 minutes together

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        # Ray's default temp dir ($RAY_TMPDIR/ray, else $TMPDIR/ray, else /tmp/ray): ours.
        RAY_TMPDIR=tmp,
        TMPDIR=tmp,
    )
    return env


def _kill_tree(proc: subprocess.Popen | None, marker: str) -> None:
    """Kill a process, its descendants and any process whose command line names `marker` (our temp dir)."""
    victims = []
    if proc is not None:
        try:
            parent = psutil.Process(proc.pid)
            victims = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                victims.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)


def _crop(src: Path, dst: Path, height: int, width: int) -> Path:
    """A real GeoTIFF cut from a real one (same CRS, transform of the window)."""
    with rasterio.open(src) as ds:
        window = rasterio.windows.Window(0, 0, width, height)
        profile = ds.profile | {
            "height": height,
            "width": width,
            "transform": ds.window_transform(window),
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
        }
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read(window=window))
    return dst


def _expected_mask(path: Path, model: Path) -> np.ndarray:
    info = raster.open_info(str(path))
    pixels, valid = raster.read_window(str(path), Window(0, 0, info.height, info.width))
    predictor = TilePredictor(model, batch_size=16)
    probs = predict_array(pixels, predictor, tile=256, overlap=64, valid=valid, fill=predictor.fill)
    return to_mask(probs, valid)


def _mask(out: Path, group: str) -> np.ndarray:
    return zarr.open_group(str(out), mode="r")[group]["mask"][:]


@pytest.fixture(scope="module")
def small_scene(data_dir, tmp_path_factory) -> Path:
    src = data_dir / "kampala" / "scene" / "kampala_z21_image.tif"
    return _crop(src, tmp_path_factory.mktemp("scene") / "kampala_crop.tif", 1024, 1536)


@pytest.fixture(scope="module")
def expected(small_scene, tiny_model_path) -> np.ndarray:
    return _expected_mask(small_scene, tiny_model_path)


def test_ray_job_submit_to_a_local_head(small_scene, expected, tiny_model_path, tmp_path):
    """`ray start --head` on 127.0.0.1, then `ray job submit -- python jobs/segment.py ...`."""
    tmp = tempfile.mkdtemp(prefix="tsray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = _env(tmp)
    dash = _free_port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={_free_port()}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={tmp}",
         f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    out = tmp_path / "submitted.zarr"
    try:
        deadline = time.monotonic() + 120
        while True:
            probe = subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True, text=True
            )
            if probe.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, f"the head never answered: {probe.stderr[-2000:]}"
            time.sleep(2)
        for _ in range(30):  # the job agent can come up a little after the dashboard answers
            job = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
                 "python", "jobs/segment.py", str(small_scene), "--out", str(out), "--model", str(tiny_model_path),
                 "--block", "1024", "--chunk", "512", "--quiet"],
                env=env, capture_output=True, text=True, timeout=420,
            )  # fmt: skip
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
    finally:
        _kill_tree(head, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    np.testing.assert_array_equal(_mask(out, "kampala_crop"), expected)
    assert zarr.open_group(str(out), mode="r")["kampala_crop"].attrs["complete"] is True


def test_actor_pool_sized_from_the_nodes_ray_reports(ray_env):
    """A head without GPUs and a node with 2 CPUs and 2 logical GPUs: one actor per GPU, TF threads = the
    node's CPUs / its actors, and actors with exactly those claims are placed by Ray, one GPU each."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from tileseg.ray_session import refresh_ray_auth
    from tileseg.segment.pipeline import NodeResources, PoolSize, cluster_nodes, size_pool

    tmp = tempfile.mkdtemp(prefix="tspool-", dir="/tmp")
    ray_env.setenv("RAY_TMPDIR", tmp)  # as in test_worker_node_killed_mid_job: nothing in /tmp/ray or ~/.ray
    ray_env.setenv("RAY_AUTH_MODE", "token")
    ray_env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    refresh_ray_auth()
    head_args = {"num_cpus": 1, "temp_dir": os.path.join(tmp, "ray"), "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        cluster.add_node(num_cpus=2, num_gpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        nodes = cluster_nodes()
        assert sorted(nodes, key=lambda n: n.gpus) == [NodeResources(1.0), NodeResources(2.0, 2.0)]
        size = size_pool(None, None, nodes)
        assert size == PoolSize(actors=2, gpus_per_actor=1.0, cpus_per_actor=0.5, threads=1, reads_ahead=4)

        @ray.remote
        class Probe:
            def gpus(self) -> list:
                return ray.get_gpu_ids()

        probes = [
            Probe.options(num_cpus=size.cpus_per_actor, num_gpus=size.gpus_per_actor).remote()
            for _ in range(size.actors)
        ]
        ids = ray.get([p.gpus.remote() for p in probes], timeout=120)
        assert sorted(len(i) for i in ids) == [1, 1] and {i[0] for i in ids} == {0, 1}
        # a read task (half a CPU) still finds room on the GPU node beside both actors
        gpu_node = next(n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU"))
        here = NodeAffinitySchedulingStrategy(gpu_node, soft=False)
        node_of = ray.remote(num_cpus=0.5)(lambda: ray.get_runtime_context().get_node_id())
        read = node_of.options(scheduling_strategy=here)
        assert ray.get(read.remote(), timeout=120) == gpu_node
    finally:
        ray.shutdown()
        cluster.shutdown()
        _kill_tree(None, tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def test_worker_node_killed_mid_job(small_scene, expected, tiny_model_path, tmp_path, ray_env):
    """Two worker nodes with logical GPUs; one is removed mid-job; the output equals a clean run."""
    from ray.cluster_utils import Cluster

    from tileseg.ray_session import refresh_ray_auth
    from tileseg.segment import segment

    tmp = tempfile.mkdtemp(prefix="tscl-", dir="/tmp")
    # Cluster writes its address file to Ray's default temp dir, not to the head's temp_dir: point the
    # default ($RAY_TMPDIR/ray) at the head's, so nothing lands in /tmp/ray. Token auth, with a token of its own.
    ray_env.setenv("RAY_TMPDIR", tmp)
    ray_env.setenv("RAY_AUTH_MODE", "token")
    ray_env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    refresh_ray_auth()
    head_args = {"num_cpus": 1, "temp_dir": os.path.join(tmp, "ray"), "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    doomed = cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "killed.zarr"
    killed = threading.Event()
    done_at_kill: list[int] = []

    def kill_when_started() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed.is_set():
            try:
                done = store.done_blocks(str(out), "kampala_crop")
                if done:
                    cluster.remove_node(doomed, allow_graceful=False)
                    done_at_kill.append(len(done))
                    killed.set()
                    return
            except Exception:  # the store is not there yet
                pass
            time.sleep(0.2)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    try:
        summary = segment(
            inputs=[str(small_scene)], out=out, model=tiny_model_path, block=512, chunk=512, actors=2,
            gpus_per_actor=0.5, address=cluster.address, progress=False,
            shared_fs=True,  # every node of this cluster runs on this machine and sees its disk
        )  # fmt: skip
    finally:
        killed.set()
        import ray

        ray.shutdown()
        cluster.shutdown()
        _kill_tree(None, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    assert done_at_kill and done_at_kill[0] < 6, "the node must die while blocks are still to do"
    assert summary.ok, summary.images
    report = summary.images[0]
    assert report.blocks_run == report.blocks == 6
    np.testing.assert_array_equal(_mask(out, "kampala_crop"), expected)


def test_driver_killed_then_resumed(small_scene, expected, tiny_model_path, tmp_path):
    """A driver killed mid-job, re-run with --resume, redoes only unfinished blocks."""
    tmp = tempfile.mkdtemp(prefix="tsdrv-", dir="/tmp")
    env = _env(tmp)
    out = tmp_path / "resumed.zarr"
    cmd = [sys.executable, "-m", "tileseg.cli", "segment", str(small_scene), "--out", str(out),
           "--model", str(tiny_model_path), "--block", "512", "--chunk", "512", "--quiet",
           "--num-cpus", "2"]  # fmt: skip
    driver = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        done: set[int] = set()
        while time.monotonic() < deadline and driver.poll() is None:
            try:
                done = store.done_blocks(str(out), "kampala_crop")
            except Exception:
                done = set()
            if len(done) >= 2:
                break
            time.sleep(0.1)
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        _kill_tree(driver, tmp)
    done_before = store.done_blocks(str(out), "kampala_crop")
    assert 2 <= len(done_before) < 6

    try:
        resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=420)
    finally:
        _kill_tree(None, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((out / ".tileseg" / "summary.json").read_text())
    report = summary["images"][0]
    assert report["blocks_resumed"] == len(done_before)
    assert report["blocks_run"] == 6 - len(done_before)
    np.testing.assert_array_equal(_mask(out, "kampala_crop"), expected)


def test_cluster_config_is_valid_and_closed():
    """ray_cluster.yaml passes Ray's cluster-launcher schema; dashboard on loopback; token auth on every node."""
    import jsonschema
    import ray.autoscaler
    import yaml

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]

    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    assert all(c.startswith("RAY_AUTH_MODE=token ") for c in ray_starts), ray_starts
    (head_start,) = [c for c in config["head_start_ray_commands"] if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    everything = yaml.safe_dump(config)
    assert "0.0.0.0" not in everything and "dashboard-host=::" not in everything
    # The token reaches every node where Ray reads it, and only its owner can read it there.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("chmod 600 ~/.ray/auth_token" in c for c in config["setup_commands"])
