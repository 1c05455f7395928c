"""A model artifact's metadata: what the model takes and gives, read without importing Keras.

`ModelMeta` is the one typed description of a model (classes, bands, normalisation, tile size,
architecture), checked against its schema when read, so every job can trust it. The metadata lives
beside Keras' own files inside the `.keras` zip.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.errors import ArtifactError
from tileseg.mask import MAX_CLASSES

METADATA_ENTRY = "tileseg.json"  # our metadata, stored beside Keras' own files inside the .keras zip
ARTIFACT_FORMAT = 1
ARCHS = ("unet", "attention_unet")
NORMALISATIONS = ("dataset", "tile")  # per-band statistics of the training set, or of each tile's valid pixels
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.keras"

__all__ = [
    "ARCHS",
    "ARTIFACT_FORMAT",
    "DEFAULT_MODEL",
    "METADATA_ENTRY",
    "NORMALISATIONS",
    "ArtifactError",
    "ModelMeta",
    "normalise",
    "normalise_tiles",
    "model_digest",
    "refuse_code_layers",
    "read_metadata",
    "resolve_model",
]


def normalise(
    pixels: np.ndarray, mean: Sequence[float] | np.ndarray | float, std: Sequence[float] | np.ndarray | float
) -> np.ndarray:
    """(pixels - mean) / std per band (last axis), computed in float32 so uint16 input never overflows."""
    x = np.array(pixels, dtype=np.float32, order="C")  # a C-ordered copy: the row view below must be a view
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    if np.any(s == 0):
        raise ValueError("normalise: std must be non-zero for every band")
    for name, v in (("mean", m), ("std", s)):
        if v.ndim and v.shape[-1] != x.shape[-1]:
            raise ValueError(f"normalise: {name} has {v.shape} values but pixels have {x.shape[-1]} bands")
    if x.ndim >= 2 and m.ndim == 1 and s.ndim == 1 and len(m) == len(s) == x.shape[-1] and x.size:
        # Rows of width w * C against the per-band values repeated w times: the same float operations as
        # broadcasting over the tiny band axis, several times faster (contiguous inner loops).
        rows = x.reshape(-1, x.shape[-2] * x.shape[-1])
        np.subtract(rows, np.tile(m, x.shape[-2]), out=rows)
        np.divide(rows, np.tile(s, x.shape[-2]), out=rows)
        return x
    x -= m
    x /= s
    return x


def normalise_tiles(
    pixels: np.ndarray, valid: np.ndarray | None = None, min_std: Sequence[float] | np.ndarray | float = 1e-6
) -> np.ndarray:
    """Per-tile standardisation: each tile (leading axes ..., h, w, C) minus its valid pixels' per-band mean,
    over their std (at least `min_std`, so a flat tile is not blown up); invalid pixels become 0.

    `valid` (..., h, w) bool; None means the finite pixels (NaN marks the pixels a tile does not have, so
    nodata never skews a tile's statistics).  A tile depends on its own pixels only: partition invariant.
    """
    x = np.asarray(pixels).astype(np.float32, copy=True)
    if x.ndim < 3:
        raise ValueError(f"normalise_tiles: pixels must be (..., h, w, C), got {x.shape}")
    if valid is None:
        valid = np.isfinite(x).all(axis=-1)
    keep = np.asarray(valid, bool)[..., None]  # (..., h, w, 1)
    x = np.where(keep, x, 0.0).astype(np.float32)
    count = np.maximum(keep.sum(axis=(-3, -2), keepdims=True), 1).astype(np.float64)
    mean = x.sum(axis=(-3, -2), keepdims=True, dtype=np.float64) / count
    var = (np.where(keep, (x - mean) ** 2, 0.0)).sum(axis=(-3, -2), keepdims=True) / count
    std = np.maximum(np.sqrt(var), np.asarray(min_std, np.float64))
    return np.where(keep, (x - mean) / std, 0.0).astype(np.float32)


def _fail(where: str, text: str) -> ArtifactError:
    return ArtifactError(f"{where}: {text}")


def _int(value: Any, key: str, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise _fail(where, f"metadata {key!r} must be an integer >= {low}, got {value!r}")
    return int(value)


def _numbers(value: Any, key: str, where: str, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise _fail(where, f"metadata {key!r} must be a non-empty list of numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not math.isfinite(float(v)):
            raise _fail(where, f"metadata {key!r} must hold finite numbers, got {v!r}")
        if positive and float(v) <= 0:
            raise _fail(where, f"metadata {key!r} must be positive, got {v!r}")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class ModelMeta:
    """What a tileseg model is: its classes, input bands (1-based), per-band normalisation, native tile
    size and architecture; `training` and `scores` record where it came from and how it scored."""

    classes: tuple[str, ...]
    bands: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tile: int
    arch: str
    base_filters: int | None = None
    depth: int | None = None
    params: int | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)  # the top-level val_* numbers
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they are
    normalisation: str = "dataset"  # one of NORMALISATIONS; artifacts from before it existed are "dataset"
    gsd: float | None = None  # median ground sampling distance (m/px) of the training rasters, when known
    gsd_range: tuple[float, float] | None = None  # 2nd..98th percentile of those GSDs (None: gsd alone)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "metadata") -> ModelMeta:
        """Check `d` against the artifact schema (types, ranges, finite numbers, consistent lengths)."""
        if not isinstance(d, Mapping):
            raise _fail(where, "metadata must be a JSON object")
        missing = [k for k in ("classes", "bands", "mean", "std", "tile", "arch") if k not in d]
        if missing:
            raise _fail(where, f"metadata lacks {', '.join(missing)}")
        classes = d["classes"]
        if not isinstance(classes, list | tuple) or not classes or not all(isinstance(c, str) and c for c in classes):
            raise _fail(where, f"metadata 'classes' must be a non-empty list of names, got {classes!r}")
        if len(classes) > MAX_CLASSES:
            raise _fail(where, f"metadata has {len(classes)} classes; at most {MAX_CLASSES} fit a uint8 mask")
        if not isinstance(d["bands"], list | tuple) or not d["bands"]:
            raise _fail(where, f"metadata 'bands' must be a non-empty list of 1-based band numbers, got {d['bands']!r}")
        bands = tuple(_int(b, "bands", where) for b in d["bands"])
        mean = _numbers(d["mean"], "mean", where)
        std = _numbers(d["std"], "std", where, positive=True)
        for key, values in (("mean", mean), ("std", std)):
            if len(values) != len(bands):
                raise _fail(where, f"metadata {key!r} has {len(values)} values for {len(bands)} bands")
        arch = d["arch"]  # one of ARCHS for models tileseg trains; any Keras model name for imported ones
        if not isinstance(arch, str) or not arch:
            raise _fail(where, f"metadata 'arch' must be a model name, got {arch!r}")
        tile = _int(d["tile"], "tile", where)
        depth = None if d.get("depth") is None else _int(d["depth"], "depth", where)
        if depth is not None and tile % 2**depth:
            raise _fail(where, f"metadata 'tile' {tile} is not divisible by 2^depth = {2**depth}")
        base = None if d.get("base_filters") is None else _int(d["base_filters"], "base_filters", where)
        params = None if d.get("params") is None else _int(d["params"], "params", where, low=0)
        training = d.get("training") or {}
        if not isinstance(training, Mapping):
            raise _fail(where, "metadata 'training' must be a JSON object")
        normalisation = d.get("normalisation", "dataset")
        if normalisation not in NORMALISATIONS:
            raise _fail(
                where, f"metadata 'normalisation' must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}"
            )
        gsd = d.get("gsd")
        if gsd is not None:
            gsd = _numbers([gsd], "gsd", where, positive=True)[0]
        gsd_range = d.get("gsd_range")
        if gsd_range is not None:
            gsd_range = _numbers(gsd_range, "gsd_range", where, positive=True)
            if len(gsd_range) != 2 or gsd_range[0] > gsd_range[1]:
                raise _fail(where, f"metadata 'gsd_range' must be [low, high] m/px, got {d['gsd_range']!r}")
        known = {f.name for f in fields(cls)} | {"format"}
        scores = {k: v for k, v in d.items() if k.startswith("val_") and isinstance(v, int | float)}
        extra = {k: v for k, v in d.items() if k not in known and k not in scores}
        return cls(
            classes=tuple(classes),
            bands=bands,
            mean=mean,
            std=std,
            tile=tile,
            arch=arch,
            base_filters=base,
            depth=depth,
            params=params,
            training=dict(training),
            scores=scores,
            extra=extra,
            normalisation=normalisation,
            gsd=gsd,
            gsd_range=gsd_range,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in the artifact (the layout older tileseg versions read too)."""
        d: dict[str, Any] = {
            "classes": list(self.classes),
            "bands": list(self.bands),
            "mean": list(self.mean),
            "std": list(self.std),
            "tile": self.tile,
            "arch": self.arch,
        }
        for key in ("base_filters", "depth", "params"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        d.update(self.scores)
        d.update(self.extra)
        d["normalisation"] = self.normalisation
        if self.gsd is not None:
            d["gsd"] = float(self.gsd)
        if self.gsd_range is not None:
            d["gsd_range"] = [float(v) for v in self.gsd_range]
        d["format"] = ARTIFACT_FORMAT
        d["training"] = dict(self.training)
        return d

    @property
    def gsd_span(self) -> tuple[float, float] | None:
        """The GSDs (m/px) the model was trained at: its recorded range, else its median alone (None: unknown)."""
        if self.gsd_range is not None:
            return self.gsd_range
        return None if self.gsd is None else (self.gsd, self.gsd)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def fill(self) -> np.ndarray:
        """What invalid pixels are replaced with: the raw value that normalises to 0 ("dataset"), or NaN
        ("tile": `normalise` leaves NaN pixels out of the tile's statistics and sets them to 0)."""
        if self.normalisation == "tile":
            return np.full(len(self.mean), np.nan, np.float32)
        return np.asarray(self.mean, np.float32)

    @property
    def min_std(self) -> np.ndarray:
        """The smallest per-tile std of "tile" normalisation: a tenth of the training set's."""
        return 0.1 * np.asarray(self.std, np.float32)

    def normalise(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Raw tiles (..., h, w, bands) as the model was trained to see them; with "tile" normalisation
        the statistics are each tile's own over its valid pixels (`valid`, default: the finite ones)."""
        if self.normalisation == "tile":
            return normalise_tiles(pixels, valid, self.min_std)
        return normalise(pixels, self.mean, self.std)

    @property
    def trained_on_8bit(self) -> bool:
        """Whether the normalisation says 8-bit data: every band's mean + 3 std under 1.5 x 255."""
        return all(m + 3 * s <= 255 * 1.5 for m, s in zip(self.mean, self.std, strict=True))


def read_metadata(path: str | Path) -> ModelMeta:
    """Read and check an artifact's metadata without loading (or executing) the model."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such model file")
    if path.suffix != ".keras":
        raise ArtifactError(f"{path}: a model artifact must be a .keras file")
    try:
        with zipfile.ZipFile(path) as zf:
            raw = json.loads(zf.read(METADATA_ENTRY))
    except KeyError:
        raise ArtifactError(f"{path}: not a tileseg artifact (no {METADATA_ENTRY} inside)") from None
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable .keras artifact ({exc})") from None
    return ModelMeta.from_dict(raw, where=str(path))


# Layers whose saved config carries Python code (bytecode or source): never loaded.
CODE_LAYERS = frozenset({"Lambda"})


def _code_layers(node: Any) -> list[str]:
    """Names of code-carrying layers anywhere in a Keras config (nested models included)."""
    found = []
    if isinstance(node, Mapping):
        if node.get("class_name") in CODE_LAYERS:
            config = node.get("config")
            found.append(str(config.get("name", node["class_name"])) if isinstance(config, Mapping) else "?")
        for value in node.values():
            found.extend(_code_layers(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_code_layers(value))
    return found


def refuse_code_layers(path: str | Path) -> None:
    """Raise ArtifactError if the artifact's Keras config (config.json in the zip) holds a Lambda layer.

    Decided from the config itself, before Keras sees the file and without importing it.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
    except KeyError:
        raise ArtifactError(f"{path}: not a readable .keras artifact (no config.json inside)") from None
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable .keras artifact ({exc})") from None
    names = _code_layers(config)
    if names:
        raise ArtifactError(
            f"{path}: refused to load: the model contains a Lambda layer ({', '.join(names)}) that would execute "
            "arbitrary code; tileseg loads models in Keras safe mode only"
        )


def model_digest(path: str | Path) -> str:
    """SHA-256 of the artifact file: the model's identity, whatever its path (a resume must match it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def resolve_model(path: str | Path | None) -> Path:
    """The artifact to use: the given path, or the small model shipped with tileseg."""
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise ArtifactError(f"no --model given and the shipped model {DEFAULT_MODEL} is missing")
        return DEFAULT_MODEL
    return Path(path).expanduser().resolve()
