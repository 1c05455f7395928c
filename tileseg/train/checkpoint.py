"""A run's checkpoints and its run directory: what is saved each epoch, how it is found and restored.

A checkpoint is a folder of `.npz` arrays (weights, optimizer state, the best weights so far) and a
`state.json` (epoch, history, best scores, the epochs at which the run (re)started).  The run directory
`<storage>/<name>` carries a marker file, so a fresh run only ever deletes a directory that a tileseg
training run made, never a user's folder that happens to sit at that path.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.errors import OptionError
from tileseg.jsonio import write_json

CHECKPOINT_FILES = ("state.json", "weights.npz", "optimizer.npz", "best_weights.npz")
RUN_MARKER = "tileseg-train-run.json"


@dataclass
class TrainState:
    """Where training stands: epochs done, per-epoch metrics, the best epoch, and restart points."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": -1.0, "epoch": None, "metrics": {}})
    starts: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "history": self.history, "best": self.best, "starts": self.starts}

    @classmethod
    def read(cls, folder: Path) -> TrainState:
        d = json.loads((folder / "state.json").read_text())
        return cls(epoch=d["epoch"], history=d["history"], best=d["best"], starts=d.get("starts", []))


def save_arrays(path: Path, arrays: Sequence[np.ndarray]) -> None:
    """A list of arrays as one .npz (order kept by zero-padded names)."""
    np.savez(path, **{f"a{i:04d}": a for i, a in enumerate(arrays)})


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays `save_arrays` wrote, in order."""
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files)]


def write_checkpoint(
    folder: Path,
    state: TrainState,
    weights: Sequence[np.ndarray],
    optimizer: Sequence[np.ndarray],
    best_weights: Sequence[np.ndarray],
) -> None:
    """Write one checkpoint's files into `folder` (state last: a folder without it is incomplete)."""
    save_arrays(folder / "weights.npz", weights)
    save_arrays(folder / "optimizer.npz", optimizer)
    save_arrays(folder / "best_weights.npz", best_weights)
    # Plain json, not jsonio: an undefined score (NaN) must come back as NaN on resume, not as null.
    (folder / "state.json").write_text(json.dumps(state.to_dict(), indent=1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint of `run_dir` with the highest epoch, or None."""
    found = []
    for folder in run_dir.glob("checkpoint_epoch*"):
        if all((folder / name).is_file() for name in CHECKPOINT_FILES):
            try:
                found.append((TrainState.read(folder).epoch, folder))
            except (OSError, ValueError, KeyError):
                continue  # a half-written checkpoint of a killed run
    return max(found)[1] if found else None


def run_paths(out: str, storage_path: str | None, name: str | None) -> tuple[Path, str]:
    """(Ray Train storage dir, run name): default `<out dir>/runs` and the artifact's stem."""
    artifact = Path(out).expanduser().resolve()
    storage = Path(storage_path).expanduser().resolve() if storage_path else artifact.parent / "runs"
    return storage, name or artifact.stem


def start_fresh_run(run_dir: Path) -> None:
    """Empty `run_dir` for a new run (Ray Train would otherwise restore the old one) and mark it ours.

    Only a directory with tileseg's run marker (or an empty one) is deleted; anything else is refused.
    """
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise OptionError(f"--name/--storage-path: {run_dir} exists and is not a training run directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not (run_dir / RUN_MARKER).is_file():
            raise OptionError(
                f"--name/--storage-path: {run_dir} exists and was not made by `tileseg train`; "
                "refusing to delete it (choose another --name or --storage-path)"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_MARKER, {"tileseg": "train run directory; deleted by the next fresh run of this name"})
