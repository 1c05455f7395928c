"""The store contract: tileseg deletes only a store it can prove is its own, one run writes a store at a
time, and a resumed image must have been planned exactly as before.

A tileseg store's root `zarr.json` carries a `tileseg` record (written by `store.create_store`); run
files (the lock, `summary.json`) live in the `.tileseg` group, a name no image group can take (image
group names never start with a dot).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tileseg.errors import StoreError
from tileseg.uri import is_uri

RUN_GROUP = ".tileseg"
LOCK_FILE = "lock"
SUMMARY_FILE = "summary.json"


def run_file(store: str | os.PathLike[str], name: str) -> Path:
    """Where the run file `name` (the lock, summary.json) of a local store lives."""
    return Path(store) / RUN_GROUP / name


def is_tileseg_store(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a directory whose root Zarr metadata carries tileseg's record."""
    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return False
    record = attrs.get("tileseg")
    return isinstance(record, Mapping) and "layout" in record


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_overwrite(out: str | os.PathLike[str], inputs: Iterable[str]) -> None:
    """Refuse `--overwrite` of anything but a tileseg store, and of a store that holds an input.

    Called while validating, before any side effect; `clear_store` does the removal later.
    """
    target = Path(out).expanduser().resolve()
    if not target.exists():
        return
    if not target.is_dir() or not is_tileseg_store(target):
        raise StoreError(
            f"{out}: exists and is not a tileseg store; --overwrite replaces only stores tileseg wrote "
            "(choose a new --out, or remove it yourself)"
        )
    for item in inputs:
        if is_uri(item):
            continue
        path = Path(item).expanduser()
        resolved = path.resolve()
        if _inside(resolved, target) or _inside(path.absolute(), Path(out).expanduser().absolute()):
            raise StoreError(f"{out}: --overwrite would delete the input {item}, which lies inside it")


def clear_store(out: str | os.PathLike[str]) -> None:
    """Remove a tileseg store's contents (a link to it stays a link); refuses anything else."""
    target = Path(out).expanduser().resolve()
    if not is_tileseg_store(target):
        raise StoreError(f"{out}: not a tileseg store; refusing to delete it")
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def check_resume(out: str | os.PathLike[str]) -> None:
    """`--resume` continues a tileseg store; anything else (missing, foreign) is refused."""
    if not Path(out).expanduser().exists():
        raise StoreError(f"{out}: no such store to resume (drop --resume to start one)")
    if not is_tileseg_store(Path(out).expanduser().resolve()):
        raise StoreError(f"{out}: not a tileseg store; --resume continues only stores tileseg wrote")


def plan_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between an image's recorded plan and this run's, in words ('' when identical)."""
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            inner = plan_difference(a, b)
            parts.append(f"{key}: {inner}")
        elif isinstance(a, list | str) and len(json.dumps(a)) > 80:
            parts.append(f"{key} differs")
        else:
            parts.append(f"{key} {a!r} -> {b!r}")
    return "; ".join(parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


class StoreLock:
    """An exclusive lock on a local store for one run: `.tileseg/lock` holds the owner's pid, host and start.

    A second writer is refused, naming the owner. A lock left by a dead process on this host is stale and
    taken over; one from another host is never guessed about (remove it by hand once that run is gone).
    """

    def __init__(self, store: str | os.PathLike[str]):
        self.path = run_file(store, LOCK_FILE)
        self.held = False

    def _owner(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                same_host = owner.get("host") == me["host"]
                if same_host and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started', '?')}"
                raise StoreError(
                    f"{self.path.parents[1]}: another run is writing this store ({who}); wait for it, or remove "
                    f"{self.path} if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise StoreError(f"{self.path}: could not take the store's lock")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
