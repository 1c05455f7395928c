"""Where a path points: a local file, a URI (s3://, https://) or a GDAL virtual path (/vsis3/...)."""

from __future__ import annotations

import os
from pathlib import Path


def is_uri(path: str | os.PathLike[str]) -> bool:
    """True for URIs and GDAL virtual paths: names no local stat or resolve applies to."""
    text = os.fspath(path)
    return "://" in text or text.startswith("/vsi")


def absolute(path: str | os.PathLike[str]) -> str:
    """Local paths made absolute (workers and records need paths that work anywhere); URIs kept as given."""
    text = os.fspath(path)
    return text if is_uri(text) else str(Path(text).expanduser().resolve())
