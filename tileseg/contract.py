"""The store contract: tileseg deletes only a store it can prove is its own, one run writes a store at a
time, and a resumed image must have been planned exactly as before.

A tileseg store's root `zarr.json` (`.zattrs` in Zarr v2) carries a `tileseg` record (written by
`store.create_store`); run files (the lock, `summary.json`) live in the `.tileseg` group, a name no
image group can take (image group names never start with a dot).
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
from tileseg.uri import is_remote, is_uri, redact

RUN_GROUP = ".tileseg"
LOCK_FILE = "lock"
SUMMARY_FILE = "summary.json"


def _fs(store: str | os.PathLike[str]) -> tuple[Any, str]:
    """(fsspec filesystem, path) of a store: local directories resolved (through links), URLs as given."""
    import fsspec

    text = os.fspath(store)
    if is_remote(text):
        return fsspec.core.url_to_fs(text.rstrip("/"))
    return fsspec.filesystem("file"), str(Path(text).expanduser().resolve())


def run_file(store: str | os.PathLike[str], name: str) -> str:
    """Where the run file `name` (the lock, summary.json) of a store lives: a path, or a URL."""
    return f"{os.fspath(store).rstrip('/')}/{RUN_GROUP}/{name}"


def write_run_file(store: str | os.PathLike[str], name: str, text: str) -> str:
    """Write a run file whole (a reader never sees half of it: local temp + rename; one PUT remotely)."""
    fs, root = _fs(store)
    path = f"{root}/{RUN_GROUP}/{name}"
    text = redact(text)  # a run file never carries a credential, whatever a message or path held
    if is_remote(store):
        fs.pipe_file(path, text.encode())
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return run_file(store, name)


def read_run_file(store: str | os.PathLike[str], name: str) -> str | None:
    """A run file's text, or None if it is not there."""
    fs, root = _fs(store)
    try:
        return fs.cat_file(f"{root}/{RUN_GROUP}/{name}").decode()
    except (FileNotFoundError, OSError):
        return None


def _brief(exc: BaseException) -> str:
    """An exception as one redacted line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return redact(lines[0] if lines else type(exc).__name__)


def check_location(out: str | os.PathLike[str]) -> None:
    """Refuse an object-store `--out` whose bucket is missing or out of reach, before anything is written.

    (A local store's directories are made as needed; whether a store can be written is known when its
    lock is taken, the run's first write.)
    """
    if not is_remote(out):
        return
    try:
        fs, root = _fs(out)
        bucket = root.split("/", 1)[0]
        found = fs.exists(bucket)
        bucket = redact(bucket.rsplit("@", 1)[-1])  # as shown: never a user:secret@ prefix
    except Exception as exc:  # noqa: BLE001 - bad credentials, no permission, endpoint unreachable
        raise StoreError(f"{redact(os.fspath(out))}: cannot reach the bucket: {_brief(exc)}") from None
    if not found:
        raise StoreError(
            f"{redact(os.fspath(out))}: no such bucket {bucket!r} (create it, or check AWS_ENDPOINT_URL and "
            "the credentials)"
        )


def exists(store: str | os.PathLike[str]) -> bool:
    """Whether anything is at `store` (a directory, a file, or objects under the URL)."""
    fs, root = _fs(store)
    if not is_remote(store):
        return os.path.lexists(os.path.expanduser(os.fspath(store)))
    try:
        return bool(fs.exists(root)) or bool(fs.ls(root, detail=False))
    except (FileNotFoundError, OSError):
        return False


def is_tileseg_store(path: str | os.PathLike[str]) -> bool:
    """Whether `path` holds a Zarr store whose root metadata carries tileseg's record."""
    fs, root = _fs(path)
    try:
        attrs = json.loads(fs.cat_file(f"{root}/zarr.json")).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        try:  # a Zarr v2 store (--zarr-format 2): the attributes are in .zattrs
            attrs = json.loads(fs.cat_file(f"{root}/.zattrs"))
        except (OSError, ValueError):
            return False
    if not isinstance(attrs, Mapping):
        return False
    record = attrs.get("tileseg")
    return isinstance(record, Mapping) and "layout" in record


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_overwrite(out: str | os.PathLike[str], inputs: Iterable[str]) -> None:
    """Refuse `--overwrite` of anything but a tileseg store, and of a store that holds an input.

    Called while validating, before any side effect; `clear_store` does the removal later.
    """
    if not exists(out):
        return
    if not is_tileseg_store(out):
        raise StoreError(
            f"{redact(os.fspath(out))}: exists and is not a tileseg store; --overwrite replaces only stores "
            "tileseg wrote (choose a new --out, or remove it yourself)"
        )
    prefix = os.fspath(out).rstrip("/") + "/"
    target = None if is_remote(out) else Path(out).expanduser().resolve()
    for item in inputs:
        if is_remote(out):
            inside = item.rstrip("/") + "/" == prefix or item.startswith(prefix)
        elif is_uri(item):
            continue
        else:
            path = Path(item).expanduser()
            inside = _inside(path.resolve(), target) or _inside(path.absolute(), Path(out).expanduser().absolute())
        if inside:
            raise StoreError(
                f"{redact(os.fspath(out))}: --overwrite would delete the input {item}, which lies inside it"
            )


def clear_store(out: str | os.PathLike[str]) -> None:
    """Remove a tileseg store's contents but the run's own lock (a link to it stays a link); refuses
    anything that is not a tileseg store."""
    if not is_tileseg_store(out):
        raise StoreError(f"{redact(os.fspath(out))}: not a tileseg store; refusing to delete it")
    fs, root = _fs(out)
    lock = f"{root}/{RUN_GROUP}/{LOCK_FILE}"
    if is_remote(out):
        doomed = [p for p in fs.find(root) if p.rstrip("/") != lock.split("://")[-1]]
        if doomed:
            fs.rm(doomed)
        return
    for child in Path(root).iterdir():
        if child.name == RUN_GROUP and (child / LOCK_FILE).exists():
            for item in child.iterdir():
                if item.name != LOCK_FILE:
                    shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def check_resume(out: str | os.PathLike[str]) -> None:
    """`--resume` continues a tileseg store; anything else (missing, foreign) is refused."""
    if not exists(out):
        raise StoreError(f"{redact(os.fspath(out))}: no such store to resume (drop --resume to start one)")
    if not is_tileseg_store(out):
        raise StoreError(f"{redact(os.fspath(out))}: not a tileseg store; --resume continues only stores tileseg wrote")


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
    """An exclusive lock on a store for one run: `.tileseg/lock` holds the owner's pid, host and start.

    Taken by an exclusive create (O_EXCL on disk; a conditional PUT, If-None-Match, in object storage), so
    two runs can never both hold it. A second writer is refused, naming the owner. A lock left by a dead
    process on this host is stale and taken over; one from another host is never guessed about (remove
    it by hand once that run is gone).
    """

    def __init__(self, store: str | os.PathLike[str]):
        self.store = store
        self.fs, root = _fs(store)
        self.path = f"{root}/{RUN_GROUP}/{LOCK_FILE}"
        self.held = False

    def _owner(self) -> dict[str, Any]:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (OSError, ValueError):
            return {}

    def _create(self, text: str) -> bool:
        """Create the lock file exclusively; False if it already exists."""
        try:
            if not is_remote(self.store):
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open(self.path, "xb") as f:
                f.write(text.encode())
        except FileExistsError:
            return False
        return True

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(2):
            try:
                created = self._create(json.dumps(me))
            except OSError as exc:  # a file in the way, no permission, no such bucket
                raise StoreError(f"cannot write {redact(os.fspath(self.store))}: {_brief(exc)}") from None
            if created:
                self.held = True
                return
            owner = self._owner()
            same_host = owner.get("host") == me["host"]
            if same_host and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                self.fs.rm_file(self.path)  # stale: its process is gone
                continue
            who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started', '?')}"
            raise StoreError(
                f"{redact(os.fspath(self.store))}: another run is writing this store ({who}); wait for it, or "
                f"remove {redact(run_file(self.store, LOCK_FILE))} if that run is gone"
            )
        raise StoreError(f"{redact(run_file(self.store, LOCK_FILE))}: could not take the store's lock")

    def release(self) -> None:
        if self.held:
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass
            self.held = False
            if not is_remote(self.store):  # a run that stopped before creating the store leaves nothing
                for folder in (Path(self.path).parent, Path(self.path).parents[1]):
                    try:
                        folder.rmdir()  # only when empty
                    except OSError:
                        break

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
