"""RaySession: the embedded Ray's workers get the job's environment (and a temp dir that dies with it);
the embedded Ray listens on loopback only and admits no one without the session's own token."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tileseg.ray_session import RaySession, no_auto_connect


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


def test_inside_a_command_no_ray_call_starts_a_ray_of_its_own(tmp_path):
    """Ray starts a default Ray (/tmp/ray, every interface, no token) when its API is called with none
    connected, as Ray Data's executor does when it is shut down after the job's Ray. Inside a command
    (`no_auto_connect`, as the CLI runs one) such a call fails instead, after the session as during it;
    the caller's setting is back afterwards. As a program (`forbid_auto_connect` before Ray is imported),
    the same holds for the whole process."""
    import ray
    from ray._private import auto_init_hook

    if ray.is_initialized():
        pytest.skip("needs to start its own Ray")
    before = auto_init_hook.enable_auto_connect
    with no_auto_connect():
        with RaySession(num_cpus=1):
            ref = ray.put(1)
            assert ray.get(ref) == 1
        with pytest.raises(ray.exceptions.RaySystemError, match="not been started"):
            ray.get(ref)
        assert not ray.is_initialized()
    assert auto_init_hook.enable_auto_connect == before

    program = (
        "from tileseg.ray_session import forbid_auto_connect\n"
        "forbid_auto_connect()\n"
        "import ray\n"
        "try:\n"
        "    ray.put(1)\n"
        "except ray.exceptions.RaySystemError:\n"
        "    print('REFUSED', ray.is_initialized())\n"
    )
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path), "HOME": str(tmp_path)}  # a failure leaves /tmp/ray alone
    env.pop("RAY_ENABLE_AUTO_CONNECT", None)
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "REFUSED False", done.stderr[-2000:]


def test_a_stream_left_early_leaves_no_ray_data_executor_running():
    """A job's stream left early (a break, a signal) shuts Ray Data's executor down before the job's Ray goes,
    rather than from `__del__` once it has gone."""
    import ray

    from tileseg.segment.pipeline import _executor_threads, _stop_execution

    if ray.is_initialized():
        pytest.skip("needs to start its own Ray")

    def slow(row):  # 50 tasks of a second each: the stream is far from done when it is left
        time.sleep(0.05)
        return row

    with RaySession(num_cpus=1):
        before = _executor_threads()
        rows = iter(ray.data.range(1000, override_num_blocks=50).map(slow).iter_rows())
        next(rows)
        assert _executor_threads() - before
        _stop_execution(rows, before)
        assert not (_executor_threads() - before)


# Another process on this machine tries to join the running Ray as a driver and run code in it.
INTRUDER = """
import os, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote(num_cpus=0)
def inside():
    return os.getpid()
print("RAN", ray.get(inside.remote(), timeout=60), flush=True)
"""


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or (addr.version == 6 and addr.ipv4_mapped is not None and addr.ipv4_mapped.is_loopback)


def _intrude(gcs_address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", INTRUDER, gcs_address], env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow
def test_embedded_ray_needs_the_session_token_and_listens_on_loopback(ray_env, tmp_path):
    """With RAY_AUTH_MODE=disabled in the caller's and the intruder's environment, a process without the
    session's token cannot join; with it, it can (so the refusal is the token's doing). Every port the
    embedded Ray opens is on loopback; the token is in no file; the caller's variables come back on exit."""
    import ray

    if ray.is_initialized():
        pytest.skip("needs to start its own Ray")
    home = tmp_path / "home"
    home.mkdir()
    ray_env.setenv("HOME", str(home))  # where Ray would put ~/.ray/auth_token
    ray_env.setenv("RAY_AUTH_MODE", "disabled")
    ray_env.delenv("RAY_AUTH_TOKEN", raising=False)
    ray_env.delenv("RAY_AUTH_TOKEN_PATH", raising=False)

    with RaySession(num_cpus=1) as session:
        gcs = ray.get_runtime_context().gcs_address
        intruder_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
        intruder_env |= {"RAY_AUTH_MODE": "disabled", "HOME": str(home), "TMPDIR": str(tmp_path)}
        refused = _intrude(gcs, intruder_env)
        assert "RAN" not in refused.stdout, "a process without the token ran code inside the embedded Ray"
        assert refused.returncode != 0
        assert "token" in refused.stderr.lower(), refused.stderr[-2000:]  # refused for want of the token

        token = os.environ.get("RAY_AUTH_TOKEN", "")
        assert os.environ["RAY_AUTH_MODE"] == "token" and len(token) >= 32
        admitted = _intrude(gcs, intruder_env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        assert admitted.returncode == 0 and "RAN" in admitted.stdout, admitted.stderr[-2000:]

        host, port = gcs.rsplit(":", 1)
        assert host == "127.0.0.1", gcs
        me = psutil.Process()
        ours = {p.pid for p in (me, *me.children(recursive=True))}
        listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
        assert int(port) in {c.laddr.port for c in listening}  # the GCS itself is among what was checked
        exposed = sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in listening if not _is_loopback(c.laddr.ip)})
        assert not exposed, f"embedded Ray listens beyond loopback: {exposed}"

        # The token is in no file Ray wrote (logs included) and not in ~/.ray.
        holding = [
            str(p) for p in Path(session.temp_dir).rglob("*") if p.is_file() and token.encode() in p.read_bytes()
        ]
        assert not holding, holding
        assert not (home / ".ray").exists()
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in os.environ
