"""RaySession: the embedded Ray's workers get the job's environment (and a temp dir that dies with it)."""

from __future__ import annotations

import os
import tempfile

import pytest

from tileseg.ray_session import RaySession


def test_embedded_workers_inherit_worker_env(monkeypatch):
    import ray

    if ray.is_initialized():
        pytest.skip("needs to start its own Ray")
    monkeypatch.delenv("TILESEG_PROBE", raising=False)
    monkeypatch.setenv("TILESEG_MINE", "caller")
    env = {"TILESEG_PROBE": "42", "TILESEG_MINE": "default"}

    @ray.remote(num_cpus=0)
    def worker_env():
        return os.environ.get("TILESEG_PROBE"), os.environ.get("TILESEG_MINE")

    @ray.remote(num_cpus=0)
    def leave_a_temp_file():
        fd, path = tempfile.mkstemp(suffix=".keras")  # as an actor killed mid-load would leave it
        os.close(fd)
        return path

    driver_tmp = tempfile.gettempdir()

    with RaySession(num_cpus=1, worker_env=env) as session:
        temp_dir = session.temp_dir
        assert session.runtime_env is None  # nothing to carry: the workers already have it
        assert "TILESEG_PROBE" not in os.environ  # the driver's own environment is left as it was
        assert ray.get(worker_env.remote()) == ("42", "caller")  # the caller's own value wins
        left = ray.get(leave_a_temp_file.remote())
        assert left.startswith(temp_dir + os.sep) and os.path.exists(left)
        assert tempfile.gettempdir() == driver_tmp and os.environ.get("TMPDIR") != temp_dir
        # A Ray this session did not start (a notebook's, a cluster's): the variables must travel.
        with RaySession(worker_env=env) as inner:
            assert inner.runtime_env == {"env_vars": {"TILESEG_PROBE": "42", "TILESEG_MINE": "caller"}}
            assert ray.get(worker_env.options(runtime_env={"env_vars": {"TILESEG_PROBE": "7"}}).remote())[0] == "7"
        assert ray.is_initialized()  # the inner session leaves the outer one's Ray alone
    assert not ray.is_initialized() and not os.path.exists(temp_dir) and not os.path.exists(left)
