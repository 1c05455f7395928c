"""A real S3 wire-protocol server on 127.0.0.1 for the tests (moto's threaded server), started and stopped
by the suite itself. boto3, s3fs/fsspec, zarr and GDAL all reach it through the standard variables."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ACCESS_KEY = "tileseg-test-access"
SECRET_KEY = "tileseg-test-secret-5f1c9e0a7b"  # grepped for in outputs: it must never appear in a file or log


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def bucket(self, name: str) -> str:
        """Create bucket `name` (if missing); return its s3:// URL prefix."""
        c = self.client()
        if name not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
            c.create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload(self, local: str | os.PathLike[str], url: str) -> str:
        bucket, key = url.removeprefix("s3://").split("/", 1)
        self.client().upload_file(os.fspath(local), bucket, key)
        return url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The server, with the AWS variables of this process (and so of the Ray workers it starts) set."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield S3Server(endpoint)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
