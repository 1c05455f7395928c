"""Ray for tileseg's jobs: the cluster named by RAY_ADDRESS, or an embedded one on this machine."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile


class RaySession:
    """Connect to the cluster named by `address`/RAY_ADDRESS, or start an embedded Ray on 127.0.0.1.

    The embedded Ray keeps every file it writes (sessions, logs) in a temp dir of its own that is
    removed on exit, keeps its auth token in the environment rather than ~/.ray, and starts no dashboard.

    `worker_env` holds defaults for the workers' environment (a variable already set here wins). An
    embedded Ray's workers inherit it from the raylet, so tasks need no runtime_env of their own and can
    run on the workers Ray starts ahead of time; on any other Ray, pass `runtime_env` to tasks and actors.
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

    def __enter__(self) -> RaySession:
        import ray

        if ray.is_initialized():
            return self
        if self.address:
            ray.init(address=self.address, logging_level="WARNING", log_to_driver=True)
        else:
            self.temp_dir = tempfile.mkdtemp(prefix="tileseg-ray-")
            if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
                # Token auth stays on, with a token that lives in this process tree only (not ~/.ray).
                os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
                # Ray then enables token mode itself; its notice about that is not for our users.
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            self.runtime_env = None
            # Workers' temp files (the actor's copy of the model, anything a library writes) go in the session
            # dir and are removed with it, even when a worker is killed before it cleans up.
            env = {**self.worker_env, "TMPDIR": self.temp_dir}
            tempfile.gettempdir()  # the driver keeps its own temp dir: fix it before TMPDIR changes
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)  # the raylet starts now and passes it on to every worker
            try:
                ray.init(
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    # Workers' own chatter (TensorFlow start-up lines) stays in the session logs; failures
                    # reach the user through the job's summary. TILESEG_RAY_LOGS=1 shows everything.
                    log_to_driver=os.environ.get("TILESEG_RAY_LOGS", "") not in ("", "0"),
                    _node_ip_address="127.0.0.1",
                    _temp_dir=self.temp_dir,
                    logging_level="WARNING",
                    configure_logging=True,
                )
            except BaseException:
                shutil.rmtree(self.temp_dir, ignore_errors=True)
                raise
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self.started:
            ray.shutdown()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
