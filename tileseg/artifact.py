"""Reading a model artifact's metadata without importing Keras or TensorFlow (drivers stay light)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

METADATA_ENTRY = "tileseg.json"  # our metadata, stored beside Keras' own files inside the .keras zip
ARTIFACT_FORMAT = 1
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.keras"


class ArtifactError(Exception):
    """A model artifact that cannot or must not be loaded."""


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read an artifact's metadata without loading (or executing) the model."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(METADATA_ENTRY))
    except KeyError:
        raise ArtifactError(f"{path}: not a tileseg artifact (no {METADATA_ENTRY} inside)") from None
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable .keras artifact ({exc})") from None


def resolve_model(path: str | Path | None) -> Path:
    """The artifact to use: the given path, or the small model shipped with tileseg."""
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise ArtifactError(f"no --model given and the shipped model {DEFAULT_MODEL} is missing")
        return DEFAULT_MODEL
    return Path(path).expanduser().resolve()
