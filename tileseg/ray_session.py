"""Ray for tileseg's jobs: the cluster named by RAY_ADDRESS, or an embedded one on this machine.

This is the one way any tileseg job (segment, train, evaluate's `--scheduler ray`) starts or joins Ray.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator

from tileseg.errors import TilesegError

# The variables an embedded session sets (or removes) for as long as it runs, whatever the caller's
# environment says, and restores on exit:
# - RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (the session's own token); RAY_AUTH_TOKEN_PATH removed;
# - RAY_TMPDIR: Ray's default temp dir (address files, locks) inside the session dir, never /tmp/ray;
# - RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's own single-node switch (its default on macOS and Windows).
#   With it, Ray keeps 127.0.0.1 as the node address instead of replacing it with the host's, and every
#   server it starts (GCS, raylet, workers, agents, metrics) binds to loopback.
_SESSION_VARS = (
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_TMPDIR",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
)


class RayStartError(TilesegError):
    """An embedded Ray that could not start (the CLI prints it as one line)."""


def forbid_auto_connect() -> None:
    """For the rest of this process (a tileseg program): no Ray API call starts or joins a Ray of its own
    accord; Ray is started only through RaySession.

    Ray starts a default Ray (in /tmp/ray, on every interface, without a token) when an API such as `ray.get`
    is called while none is connected. Something of Ray Data's that outlives a job's Ray (its executor,
    shut down from `__del__` when a Ctrl-C left it running) would do just that, and the program would then
    hang on exit; with auto-connect off the call fails instead. Ray reads RAY_ENABLE_AUTO_CONNECT when it
    is imported: the variable covers a later import, the module's flag a Ray imported already.
    """
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    hook = sys.modules.get("ray._private.auto_init_hook")
    if hook is not None:
        hook.enable_auto_connect = False


@contextlib.contextmanager
def no_auto_connect() -> Iterator[None]:
    """`forbid_auto_connect` while inside; the caller's setting is back afterwards (for a library call)."""
    hook = sys.modules.get("ray._private.auto_init_hook")
    saved_flag = hook.enable_auto_connect if hook is not None else None
    saved_env = os.environ.get("RAY_ENABLE_AUTO_CONNECT")
    forbid_auto_connect()
    try:
        yield
    finally:
        _restore({"RAY_ENABLE_AUTO_CONNECT": saved_env})
        hook = sys.modules.get("ray._private.auto_init_hook")
        if hook is not None:
            hook.enable_auto_connect = saved_flag if saved_flag is not None else saved_env != "0"


def refresh_ray_auth() -> None:
    """Make this process's Ray (its cached config and token) see the authentication variables as they are now."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class RaySession:
    """Connect to the cluster named by `address`/RAY_ADDRESS, or start an embedded Ray on this machine.

    The embedded Ray:
    - always requires a token (RAY_AUTH_MODE=token), even when the caller's environment says
      RAY_AUTH_MODE=disabled: a fresh random token made for this session, held only in this process's
      environment (inherited by the Ray processes it starts), never in ~/.ray or a file or a log; the
      caller's RAY_AUTH_* variables are restored on exit;
    - keeps every file it or its workers write (sessions, logs, sockets, temp files) in a temp dir of its
      own that is removed on exit; nothing goes to /tmp/ray or ~/.ray;
    - listens on 127.0.0.1 only (GCS, raylet, workers, agents, metrics), and starts no dashboard, so no
      Jobs API. Loopback keeps other hosts out; the token keeps out other processes on this machine.

    If Ray is already initialised in this process (a notebook's, a test's), the session uses it as it is
    and leaves it running on exit.

    `num_cpus` caps the CPUs the embedded Ray offers (default: all). `worker_env` holds defaults for the
    workers' environment (a variable already set here wins). An embedded Ray's workers inherit it from the
    raylet, so tasks need no runtime_env of their own and can run on the workers Ray starts ahead of time;
    on any other Ray, pass `runtime_env` to tasks and actors. Dask-on-Ray needs nothing more:
    `with RaySession(num_cpus=n): dask.compute(..., scheduler=ray.util.dask.ray_dask_get)`.
    """

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, worker_env: dict[str, str] | None = None
    ):
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.num_cpus = num_cpus
        self.worker_env = {k: os.environ.get(k, v) for k, v in (worker_env or {}).items()}
        # What tasks and actors must carry so that their workers see worker_env: nothing when this session
        # starts the embedded Ray itself (set in __enter__), the variables on any Ray started elsewhere.
        self.runtime_env: dict | None = {"env_vars": self.worker_env} if self.worker_env else None
        self.temp_dir: str | None = None
        self.started = False
        self._caller_env: dict[str, str | None] | None = None
        self._no_auto_connect = contextlib.ExitStack()

    @property
    def embedded(self) -> bool:
        """True when this session started (and will stop) an embedded Ray."""
        return self.temp_dir is not None

    def __enter__(self) -> RaySession:
        import ray

        if ray.is_initialized():
            return self
        # Until this session is left, a thread that outlives its Ray cannot start another one.
        self._no_auto_connect.enter_context(no_auto_connect())
        try:
            if self.address:
                refresh_ray_auth()  # the caller's RAY_AUTH_* as they are now, not as they were at import
                ray.init(address=self.address, logging_level="WARNING", log_to_driver=True)
                self.started = True
                return self
            self._start_embedded()
        except BaseException:
            self._no_auto_connect.close()
            raise
        return self

    def _start_embedded(self) -> None:
        import ray

        self.temp_dir = tempfile.mkdtemp(prefix="tileseg-ray-")
        tempfile.gettempdir()  # the driver keeps its own temp dir: fix it before TMPDIR changes
        # For the whole session (see _SESSION_VARS): a token of its own, Ray's default temp dir inside the
        # session dir, loopback only. The Ray processes started here inherit them.
        session_env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_TMPDIR": self.temp_dir,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
        self._caller_env = {k: os.environ.get(k) for k in _SESSION_VARS}
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ.update(session_env)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.runtime_env = None
        # Only while Ray starts (the raylet passes it on to every worker): the worker defaults, and TMPDIR so
        # that workers' temp files (the actor's copy of the model, anything a library writes) land in the
        # session dir and are removed with it, even when a worker is killed before it cleans up.
        start_env = {**self.worker_env, "TMPDIR": self.temp_dir}
        saved = {k: os.environ.get(k) for k in start_env}
        os.environ.update(start_env)
        try:
            refresh_ray_auth()
            with _single_node():
                ray.init(
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    # Workers' own chatter (TensorFlow start-up lines) stays in the session logs; failures
                    # reach the user through the job's summary. TILESEG_RAY_LOGS=1 shows everything.
                    log_to_driver=os.environ.get("TILESEG_RAY_LOGS", "") not in ("", "0"),
                    # Bound to, advertised and connected to: loopback (kept so by _single_node).
                    _node_ip_address="127.0.0.1",
                    _temp_dir=self.temp_dir,
                    logging_level="WARNING",
                    configure_logging=True,
                )
        except BaseException as exc:
            _restore(saved)
            self._stop_embedded()
            if isinstance(exc, Exception):  # Ray's own start-up failures (an overloaded machine): one line
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                raise RayStartError(f"could not start an embedded Ray: {lines[-1] if lines else exc!r}") from exc
            raise
        _restore(saved)
        self.started = True

    def _stop_embedded(self) -> None:
        if self._caller_env is not None:
            _restore(self._caller_env)
            self._caller_env = None
            refresh_ray_auth()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        import ray

        try:
            if self.started:
                ray.shutdown()
                self.started = False
            if self.embedded:
                self._stop_embedded()
        finally:
            self._no_auto_connect.close()


def _restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def _single_node():
    """While Ray starts here: keep the node address 127.0.0.1 (Ray's single-node mode, as on macOS/Windows).

    On Linux `ray.init` replaces a loopback `_node_ip_address` with the host's address, and its servers
    then listen on every interface. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import; this sets
    the value it read for the few seconds of `ray.init` (the processes it starts read the variable).
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
