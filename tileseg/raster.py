"""Raster input: find images, describe them, and read any window of them with a validity mask.

Everything goes through GDAL (via rasterio), so GeoTIFF, COG, VRT, JPEG 2000, PNG and JPEG all read the
same way; OpenCV is only a fallback for PNG/JPEG files that GDAL cannot open. Every failure is raised as
a `RasterError` whose message names the file and the problem, so a batch can report it and move on.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
import re
import stat
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning

from tileseg.errors import RasterError, UnrecognisedRasterError
from tileseg.grid import Window
from tileseg.uri import gdal_cloud_options, gdal_path, is_remote, is_uri, redact, url_of

__all__ = [
    "RASTER_EXTENSIONS",
    "ImageInfo",
    "RasterError",
    "check_bands",
    "clear_cache",
    "discover",
    "open_info",
    "open_infos",
    "read_overview",
    "read_window",
]

#: File name endings (lower case) that `discover` treats as rasters.
RASTER_EXTENSIONS: frozenset[str] = frozenset(
    {".tif", ".tiff", ".gtiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt"}
)
# Sidecars GDAL reads beside a raster: named so the skip reason says what they are.
_SIDECARS: dict[str, str] = {
    ".aux.xml": "GDAL metadata sidecar (.aux.xml)",
    ".ovr": "overview sidecar (.ovr)",
    ".msk": "mask sidecar (.msk)",
    ".aux": "auxiliary sidecar (.aux)",
    ".tfw": "world file (.tfw)",
    ".pgw": "world file (.pgw)",
    ".jgw": "world file (.jgw)",
    ".wld": "world file (.wld)",
    ".prj": "projection sidecar (.prj)",
}
_OPENCV_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
_PIXEL_TRANSFORM = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class ImageInfo:
    """What the pipeline needs to know about one input image (JSON-able via `to_dict`).

    `transform` is the affine (a, b, c, d, e, f) in rasterio order; images without georeferencing
    (PNG/JPEG) get the pixel transform (1, 0, 0, 0, 1, 0) and `crs` None. `alpha_band` is the 1-based
    index of an alpha band (it defines validity and is left out of the default band selection).
    """

    path: str
    height: int
    width: int
    bands: int
    dtype: str
    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    nodata: float | None
    driver: str
    alpha_band: int | None = None

    @property
    def has_crs(self) -> bool:
        """True when the image carries a coordinate reference system."""
        return bool(self.crs)

    @property
    def gsd(self) -> float | None:
        """Ground sampling distance in metres per pixel at the image centre, or None without a CRS."""
        return ground_sampling_distance(self.crs, self.transform, self.height, self.width)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.height, self.width)

    @property
    def data_bands(self) -> tuple[int, ...]:
        """The default band selection: every band except an alpha band (1-based)."""
        return tuple(b for b in range(1, self.bands + 1) if b != self.alpha_band)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN nodata becomes the string "nan", since JSON has no NaN)."""
        d = asdict(self)
        d["transform"] = [float(v) for v in self.transform]
        if self.nodata is not None and math.isnan(self.nodata):
            d["nodata"] = "nan"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageInfo:
        """Inverse of `to_dict`; unknown keys are ignored so older/newer records still load."""
        nodata = d.get("nodata")
        return cls(
            path=str(d["path"]),
            height=int(d["height"]),
            width=int(d["width"]),
            bands=int(d["bands"]),
            dtype=str(d["dtype"]),
            crs=d.get("crs") or None,
            transform=tuple(float(v) for v in d["transform"]),  # type: ignore[arg-type]
            nodata=None if nodata is None else float(nodata),
            driver=str(d.get("driver", "")),
            alpha_band=None if d.get("alpha_band") is None else int(d["alpha_band"]),
        )


def ground_sampling_distance(crs: str | None, transform: Sequence[float], height: int, width: int) -> float | None:
    """Metres on the ground per pixel at the grid's centre (the mean of its x and y steps), or None.

    Measured on the WGS84 ellipsoid between the centre pixel and its neighbours, so it is true ground
    distance in any CRS: geographic grids at the image's latitude, Web Mercator's scale distortion included.
    """
    if not crs:
        return None
    from affine import Affine
    from pyproj import CRS, Geod, Transformer

    t = Affine(*transform[:6])
    cx, cy = width / 2, height / 2
    xs, ys = zip(*(t @ p for p in ((cx, cy), (cx + 1, cy), (cx, cy + 1))), strict=True)
    try:
        lon, lat = Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True).transform(xs, ys)
    except Exception:  # noqa: BLE001 - a CRS pyproj cannot place on the Earth (engineering, local)
        return None
    geod = Geod(ellps="WGS84")
    _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
    value = (abs(dx) + abs(dy)) / 2
    return float(value) if math.isfinite(value) and value > 0 else None


# ---------------------------------------------------------------------------------------------- discovery

_DIR_LINK = "symbolic link to a directory: not followed (name it as an input to include it)"


def _ending(name: str) -> str:
    """Lower-case file ending used for classification (two-part for `.aux.xml`)."""
    low = name.lower()
    if low.endswith(".aux.xml"):
        return ".aux.xml"
    return os.path.splitext(low)[1]


def _classify(path: str) -> str | None:
    """None if `path` looks like a raster by its name, else the reason to skip it (no file is opened)."""
    name = os.path.basename(path)
    end = _ending(name)
    if end in RASTER_EXTENSIONS:
        return None
    if end in _SIDECARS:
        return f"not a raster: {_SIDECARS[end]}"
    if not end:
        return "not a raster: no file extension"
    return f"not a raster: unknown extension {end!r}"


def _hidden(name: str) -> bool:
    """Dot names (.git, .DS_Store ...) are left out of directory walks and wildcard matches."""
    return name.startswith(".")


def _is_dir_link(entry: os.DirEntry[str]) -> bool:
    """True if a directory entry is a symbolic link to a directory (one that discovery does not follow)."""
    return entry.is_symlink() and entry.is_dir()


def _walk(directory: str) -> tuple[list[str], list[str]]:
    """(files, directory links) below `directory`, each sorted; hidden entries skipped, links not followed.

    Directory links are never descended into, so a link loop cannot repeat files; file links are files.
    """
    files: list[str] = []
    links: list[str] = []
    stack = [directory]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top or os.curdir))  # "" is the working directory, paths stay relative
        except OSError:
            continue  # unreadable or vanished directory: what it holds cannot be listed
        for e in entries:
            if _hidden(e.name):
                continue
            path = os.path.join(top, e.name)
            if e.is_dir(follow_symlinks=False):
                stack.append(path)
            elif _is_dir_link(e):
                links.append(path)
            else:
                files.append(path)
    return sorted(files), sorted(links)


def _split_pattern(pattern: str) -> tuple[str, list[str]]:
    """(anchor, components) of a glob pattern: '/' or '' and the non-empty parts between separators."""
    anchor = os.sep if pattern.startswith(os.sep) else ""
    return anchor, [p for p in pattern.split(os.sep) if p]


def _below(base: str) -> tuple[list[str], list[str]]:
    """(`base` and every directory under it, the directory links met): what a middle `**` matches.

    Hidden names are skipped and links are not followed, as in `_walk`.
    """
    found, links = [base], []
    stack = [base]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top or os.curdir))
        except OSError:
            continue
        for e in entries:
            if _hidden(e.name):
                continue
            path = os.path.join(top, e.name)
            if e.is_dir(follow_symlinks=False):
                found.append(path)
                stack.append(path)
            elif _is_dir_link(e):
                links.append(path)
    return found, links


def _match(base: str, part: str, *, last: bool) -> tuple[list[str], list[str], list[str]]:
    """(directories, other entries, directory links) of `base` matching one wildcard component.

    Before the last component only real directories are wanted; a link to a directory is never stepped
    into. Uses the directory entries' types, so no entry is stat'ed.
    """
    try:
        entries = list(os.scandir(base or os.curdir))
    except OSError:
        return [], [], []
    matches = re.compile(fnmatch.translate(part)).match
    show_hidden = _hidden(part)
    dirs, others, links = [], [], []
    for e in entries:
        if (not show_hidden and _hidden(e.name)) or not matches(e.name):
            continue
        if e.is_dir(follow_symlinks=False):
            dirs.append(os.path.join(base, e.name))
        elif last:
            (links if _is_dir_link(e) else others).append(os.path.join(base, e.name))
    return dirs, others, links


def _glob(pattern: str) -> tuple[list[tuple[str, bool]], list[str]]:
    """(sorted (match, is a directory) of a glob pattern, sorted directory links it did not follow).

    Like glob.glob(recursive=True), except that `*`, `?`, `[...]` and `**` only step into real
    directories, so a link loop (`a/loop -> ..`) cannot multiply the matches; literal components are
    taken as written (a link named in the pattern is followed). A final `**` yields its base directory,
    whose walk then covers everything below it.
    """
    anchor, parts = _split_pattern(pattern)
    dirs, files, links = [anchor], [], []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        bases, dirs = dirs, []
        for base in bases:
            if part == "**" and last:
                dirs.append(base)
            elif part == "**":
                found, met = _below(base)
                dirs.extend(found)
                links.extend(met)
            elif glob.has_magic(part):
                found, others, met = _match(base, part, last=last)
                dirs.extend(found)
                files.extend(others)
                links.extend(met)
            elif os.path.isdir(path := os.path.join(base, part)):
                dirs.append(path)
            elif last and os.path.lexists(path):
                files.append(path)
    if pattern.endswith(os.sep):
        files = []
    matches = {(d, True) for d in dirs} | {(f, False) for f in files}
    return sorted(matches), sorted(set(links))


def _identity(path: str) -> tuple[Any, ...]:
    """What makes two inputs the same file: (device, inode) locally, the URL for URIs (so s3://b/k and
    /vsis3/b/k are one object).

    Two paths to one file, a file link and its target, and hard links all share an identity; a path that
    cannot be stat'ed (a dangling link, a vanished file) is identified by its absolute path.
    """
    if is_uri(path):
        return ("uri", url_of(path))
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.abspath(path))
    return ("file", st.st_dev, st.st_ino)


def discover(inputs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files, directories (recursively, sorted) and glob patterns into raster paths.

    Returns (paths, skipped): skipped holds (path, reason) for inputs that are clearly not rasters
    (by extension: text files, sidecars ...), patterns or prefixes that match nothing, or directory links
    met while walking or matching a pattern (only a link named as an input is followed). Nothing is
    opened: `open_info` reports files that merely look like rasters, and a file named that does not exist
    (its image fails, as a missing object's does). Each file is listed once, under the first path that
    reaches it (inputs in the order given, each expanded in sorted order), found by its identity:
    device and inode for local files, so two paths, file links and hard links to it count once; the
    URL for URIs and GDAL virtual paths (s3://b/k and /vsis3/b/k are one), which are passed on unchecked.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [os.fspath(inputs)]
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen: set[tuple[Any, ...]] = set()

    def consider(p: str) -> None:
        reason = _classify(p)
        key = _identity(p) if reason is None else ("path", p if is_uri(p) else os.path.abspath(p))
        if key in seen:
            return
        seen.add(key)
        if reason is None:
            paths.append(p)
        else:
            skipped.append((p, reason))

    def not_followed(links: list[str]) -> None:
        for link in links:
            try:  # the link itself: one link reached by several paths is reported once
                st = os.lstat(link)
                key: tuple[Any, ...] = ("link", st.st_dev, st.st_ino)
            except OSError:
                key = ("link", os.path.abspath(link))
            if key not in seen:
                seen.add(key)
                skipped.append((link, _DIR_LINK))

    def expand(directory: str) -> None:
        files, links = _walk(directory)
        for f in files:
            consider(f)
        not_followed(links)

    for raw in inputs:
        item = os.fspath(raw)
        if is_remote(item):
            found, why = _list_remote(item)
            for url in found:
                consider(url)
            if why:
                skipped.append((item, why))
        elif is_uri(item):
            if glob.has_magic(item):
                skipped.append((item, "patterns are not expanded in GDAL virtual paths (use the URL form)"))
            else:
                consider(item)
        elif os.path.isdir(item):
            expand(item)
        elif os.path.lexists(item):
            consider(item)
        elif glob.has_magic(item):
            matches, links = _glob(item)
            if not matches and not links:
                skipped.append((item, "no files match this pattern"))
            for m, is_dir in matches:
                if is_dir:
                    expand(m)
                else:
                    consider(m)
            not_followed(links)
        else:  # named but not there: passed on, so that opening it fails the image naming it (as for a URL)
            consider(item)
    return paths, skipped


def _list_remote(url: str) -> tuple[list[str], str | None]:
    """The raster URLs an object-store input names: itself (an object), what a pattern matches, or every
    object under a prefix ("directory"), sorted; with why nothing came of it, if nothing did.

    Listing goes through fsspec (s3fs for s3://), which reads credentials from the standard variables.
    An object named directly is passed on unchecked: opening its header says whether it exists.
    """
    import fsspec

    name = url.rstrip("/").rsplit("/", 1)[-1]
    if not glob.has_magic(url) and not url.endswith("/") and _ending(name):
        why = _classify(url)  # an object named directly: a raster by its name, or not one (no request made)
        return ([url], None) if why is None else ([], why)
    try:
        fs, path = fsspec.core.url_to_fs(url)
        protocol = url.split("://", 1)[0]
        if glob.has_magic(path):
            keys = sorted(k for k in fs.glob(path) if not fs.isdir(k))
            if not keys:
                return [], "no objects match this pattern"
        elif url.endswith("/") or fs.isdir(path):
            keys = sorted(fs.find(path))
            if not keys:
                return [], "no objects under this prefix (or no such bucket)"
        else:
            return [url], None
    except Exception as exc:  # noqa: BLE001 - listing fails in each store's own way: say why, in one line
        return [], f"cannot list ({redact(_cause(exc)).splitlines()[0][:300]})"
    urls = [f"{protocol}://{k}" for k in keys]
    rasters = [u for u in urls if _classify(u) is None]
    if not rasters:
        return [], f"no rasters among {len(urls)} objects"
    return rasters, None


# ------------------------------------------------------------------------------------------------ opening


def _cause(exc: BaseException) -> str:
    """The most specific message of an exception chain (rasterio hides GDAL's reason in __cause__)."""
    msgs = []
    e: BaseException | None = exc
    while e is not None and len(msgs) < 4:
        text = str(e).strip() or type(e).__name__
        if text not in msgs:
            msgs.append(text)
        e = e.__cause__ or e.__context__
    generic = [m for m in msgs if "see previous exception" not in m.lower()]
    return "; ".join(generic or msgs)


def _precheck(path: str) -> None:
    """Give plain-language errors for local files that GDAL would only call 'not recognized'."""
    if is_uri(path):
        return
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise RasterError(f"{path}: is a directory, not a raster file")
        if not stat.S_ISREG(st.st_mode):
            raise RasterError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        raise RasterError(f"{path}: permission denied") from None
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else "no such file"
        raise RasterError(f"{path}: {reason}") from None
    except OSError as e:
        raise RasterError(f"{path}: cannot be read ({e.strerror or e})") from None
    if st.st_size == 0:
        raise RasterError(f"{path}: empty file (0 bytes)")


def cloud_env() -> rasterio.Env:
    """A GDAL environment with the object-storage settings (`uri.gdal_cloud_options`; the user's own win).

    Entered only around remote opens and reads: settings such as GDAL_DISABLE_READDIR_ON_OPEN must not
    reach local files, whose sidecars (.msk, .ovr, .aux.xml) GDAL finds by listing their directory.
    """
    from rasterio.session import DummySession

    return rasterio.Env(session=DummySession(), **gdal_cloud_options())


@contextmanager
def _open(path: str) -> Iterator[rasterio.io.DatasetReader]:
    """rasterio.open with errors turned into RasterError and the no-georeference warning silenced; a remote
    dataset is opened, read and closed under `cloud_env`."""
    _precheck(path)
    with cloud_env() if is_uri(path) else nullcontext():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = rasterio.open(gdal_path(path))
        except Exception as e:  # rasterio raises RasterioIOError, CPLE_* or plain OSError
            raise UnrecognisedRasterError(f"{path}: not a readable raster ({_cause(e)})") from None
        try:
            yield ds
        finally:
            ds.close()


class _ThreadCache(threading.local):
    """Per-thread LRU of open datasets: windows of one image are read by one thread in turn, and
    keeping the dataset open keeps GDAL's block cache (overlapping tiles are not decoded twice).
    Datasets are never shared between threads; after a fork the child starts empty."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.items: OrderedDict[tuple[str, int, int, int], rasterio.io.DatasetReader] = OrderedDict()


_CACHE = _ThreadCache()
_CACHE_SIZE = 2


def clear_cache() -> None:
    """Close the datasets this thread keeps open for `read_window`."""
    for ds in _CACHE.items.values():
        ds.close()
    _CACHE.items.clear()


@contextmanager
def _cached_open(path: str) -> Iterator[rasterio.io.DatasetReader]:
    """Like `_open`, but reuses this thread's open dataset while the file is unchanged."""
    if is_uri(path):
        with _open(path) as ds:
            yield ds
        return
    _precheck(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if _CACHE.pid != os.getpid():
        _CACHE.pid, _CACHE.items = os.getpid(), OrderedDict()
    ds = _CACHE.items.pop(key, None)
    if ds is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = rasterio.open(path)
        except Exception as e:
            raise UnrecognisedRasterError(f"{path}: not a readable raster ({_cause(e)})") from None
    try:
        yield ds
    except BaseException:
        ds.close()  # do not keep a dataset that just failed
        raise
    _CACHE.items[key] = ds
    while len(_CACHE.items) > _CACHE_SIZE:
        _CACHE.items.popitem(last=False)[1].close()


def _alpha_band(ds: rasterio.io.DatasetReader) -> int | None:
    for i, ci in enumerate(ds.colorinterp, start=1):
        if ci == ColorInterp.alpha:
            return i
    return None


def _info_from_dataset(path: str, ds: rasterio.io.DatasetReader) -> ImageInfo:
    t = ds.transform
    georef = not t.is_identity or ds.crs is not None
    transform = (t.a, t.b, t.c, t.d, t.e, t.f) if georef else _PIXEL_TRANSFORM
    dtypes = set(ds.dtypes)
    if len(dtypes) != 1:
        raise RasterError(f"{path}: bands have different data types {sorted(dtypes)}; not supported")
    return ImageInfo(
        path=path,
        height=int(ds.height),
        width=int(ds.width),
        bands=int(ds.count),
        dtype=str(ds.dtypes[0]),
        crs=ds.crs.to_wkt() if ds.crs else None,
        transform=tuple(float(v) for v in transform),  # type: ignore[arg-type]
        nodata=None if ds.nodata is None else float(ds.nodata),
        driver=str(ds.driver),
        alpha_band=_alpha_band(ds),
    )


def _shape_info(path: str, ds: rasterio.io.DatasetReader) -> ImageInfo:
    """The parts of ImageInfo a read needs (no CRS export: that costs more than a small read)."""
    return ImageInfo(
        path,
        int(ds.height),
        int(ds.width),
        int(ds.count),
        str(ds.dtypes[0]),
        None,
        _PIXEL_TRANSFORM,
        None,
        str(ds.driver),
        alpha_band=_alpha_band(ds),
    )


def _cv2_read(path: str, gdal_error: RasterError | None = None) -> np.ndarray:
    """Whole image via OpenCV as (h, w, C) in RGB(A) order, for PNG/JPEG files GDAL cannot open."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        if gdal_error is not None:
            raise RasterError(f"{gdal_error} (OpenCV cannot decode it either)") from None
        raise RasterError(f"{path}: not a readable image (GDAL and OpenCV both failed)")
    if img.ndim == 2:
        img = img[:, :, None]
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


def _cv2_info(path: str, img: np.ndarray) -> ImageInfo:
    """ImageInfo of an image decoded by OpenCV: no georeferencing, alpha if it has 4 channels."""
    h, w, c = img.shape
    return ImageInfo(
        path, h, w, c, str(img.dtype), None, _PIXEL_TRANSFORM, None, "OpenCV", alpha_band=4 if c == 4 else None
    )


def _use_opencv(path: str, err: RasterError) -> bool:
    """OpenCV fallback only for PNG/JPEG files GDAL could not open (not for missing, empty or unreadable
    files, nor for a failed read of a file GDAL did open): decided by the error's type."""
    return isinstance(err, UnrecognisedRasterError) and os.path.splitext(path)[1].lower() in _OPENCV_EXTENSIONS


def open_info(path: str | os.PathLike[str], *, probe: bool = True) -> ImageInfo:
    """Describe a raster (size, bands, dtype, georeferencing) or raise RasterError naming file and cause.

    With `probe` (default) the last block is also read, so a truncated file fails here rather than
    half-way through a job; the cost is one block.
    """
    path = os.fspath(path)
    try:
        with _open(path) as ds:
            info = _info_from_dataset(path, ds)
            if probe and info.height and info.width:
                bh, bw = ds.block_shapes[0]
                r0 = max(0, info.height - min(bh, info.height))
                c0 = max(0, info.width - min(bw, info.width))
                try:
                    ds.read(window=rasterio.windows.Window(c0, r0, info.width - c0, info.height - r0))
                except Exception as e:
                    raise RasterError(f"{path}: corrupt or truncated raster ({_cause(e)})") from None
            return info
    except RasterError as err:
        if _use_opencv(path, err):
            return _cv2_info(path, _cv2_read(path, err))
        raise


def open_infos(
    paths: Sequence[str | os.PathLike[str]], *, workers: int = 8, probe: bool = True
) -> list[ImageInfo | Exception]:
    """`open_info` of many paths in a thread pool: per path, in input order, its ImageInfo or exception.

    Header reads wait on storage (a network file system, object storage), not on the CPU, and GDAL
    releases the GIL, so threads overlap them; one bad file yields its exception and the rest go on.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def one(path: str | os.PathLike[str]) -> ImageInfo | Exception:
        try:
            return open_info(path, probe=probe)
        except Exception as e:  # returned, not raised: the caller reports each file on its own
            return e

    if workers == 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(workers, len(paths)), thread_name_prefix="open_info") as pool:
        return list(pool.map(one, paths))


def check_bands(info: ImageInfo, bands: Sequence[int] | None) -> tuple[int, ...]:
    """Validate a 1-based band selection against the file; None means every non-alpha band."""
    if bands is None:
        sel = info.data_bands
        if not sel:
            raise RasterError(f"{info.path}: no data bands (only an alpha band)")
        return sel
    sel = tuple(bands)
    if not sel:
        raise RasterError(f"{info.path}: empty band selection")
    for b in sel:
        if isinstance(b, bool) or not isinstance(b, int | np.integer):
            raise RasterError(f"{info.path}: band numbers must be integers, got {b!r}")
        if b < 1:
            raise RasterError(f"{info.path}: bands are numbered from 1, got {b}")
        if b > info.bands:
            raise RasterError(
                f"{info.path}: requested band {b} but file has {info.bands} band{'s' * (info.bands != 1)}"
            )
    return tuple(int(b) for b in sel)


# ------------------------------------------------------------------------------------------------ reading


def _fill_value(fill: float, dtype: np.dtype, path: str) -> Any:
    """`fill` as a value of `dtype`, refusing silent wrap-around (e.g. -1 into uint8, NaN into ints)."""
    if np.issubdtype(dtype, np.integer):
        lim = np.iinfo(dtype)
        if not (math.isfinite(fill) and float(fill).is_integer() and lim.min <= fill <= lim.max):
            raise ValueError(f"{path}: fill value {fill!r} does not fit the image data type {dtype}")
    return np.array(fill).astype(dtype)


def _valid_from(
    ds: rasterio.io.DatasetReader,
    data: np.ndarray,
    indexes: Sequence[int],
    alpha: int | None,
    win: rasterio.windows.Window,
) -> np.ndarray | None:
    """GDAL validity of a window: a pixel is valid if any selected data band's mask says so (None: every
    pixel is, known without building the array).

    read_masks honours nodata values, internal/external (.msk) mask bands and alpha bands; a non-finite
    value (NaN, inf, -inf) in any selected band also makes the pixel invalid (a network cannot consume it).
    """
    mask_idx = [i for i in dict.fromkeys(indexes) if i != alpha]
    if not mask_idx:
        mask_idx = [next(i for i in range(1, ds.count + 1) if i != alpha)] if ds.count > 1 else [1]
    flags = ds.mask_flag_enums
    valid = None  # no nodata, mask or alpha: every pixel valid, no mask read
    if not all(flags[i - 1] == [MaskFlags.all_valid] for i in mask_idx):
        valid = np.any(ds.read_masks(mask_idx, window=win) != 0, axis=0)
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data).all(axis=0)
        valid = finite if valid is None else valid & finite
    return valid


def _fill_outside(out: np.ndarray, span: tuple[int, int, int, int], fv: Any) -> np.ndarray:
    """Fill `out` with `fv` outside rows [r0, r1) x columns [c0, c1) (`span`); return the view inside."""
    r0, r1, c0, c1 = span
    out[:r0] = fv
    out[r1:] = fv
    out[r0:r1, :c0] = fv
    out[r0:r1, c1:] = fv
    return out[r0:r1, c0:c1]


def read_window(
    path: str | os.PathLike[str],
    window: Window,
    *,
    bands: Sequence[int] | None = None,
    fill: float = 0,
    fill_invalid: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Read any window (it may hang past every edge or be larger than the image) with its validity.

    Returns pixels (h, w, C) in the file's native dtype and valid (h, w) bool: False outside the image
    and where GDAL's mask says nodata (nodata value, mask band, alpha) or any band is not finite (NaN,
    inf). Invalid pixels hold `fill` (set `fill_invalid=False` to keep the stored values inside the image;
    non-finite values are always replaced). Bands are 1-based; by default all bands except an alpha band.
    """
    path = os.fspath(path)
    row, col, height, width = (int(v) for v in window)
    if height <= 0 or width <= 0:
        raise ValueError(f"{path}: window {tuple(window)} has no pixels")
    try:
        with _cached_open(path) as ds:
            info = _shape_info(path, ds)
            sel = check_bands(info, bands)
            dtype = np.dtype(info.dtype)
            fv = _fill_value(fill, dtype, path)
            out = np.empty((height, width, len(sel)), dtype=dtype)
            valid = np.zeros((height, width), dtype=bool)
            r0, r1 = max(row, 0), min(row + height, info.height)
            c0, c1 = max(col, 0), min(col + width, info.width)
            if r0 >= r1 or c0 >= c1:
                out.fill(fv)
                return out, valid
            inside = _fill_outside(out, (r0 - row, r1 - row, c0 - col, c1 - col), fv)
            win = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
            try:
                # GDAL writes the bands straight into the interleaved (h, w, C) pixels: no planar copy.
                data = ds.read(list(sel), window=win, out=inside.transpose(2, 0, 1))
                inner = _valid_from(ds, data, sel, info.alpha_band, win)
            except Exception as e:
                raise RasterError(f"{path}: read failed in window {tuple(window)} ({_cause(e)})") from None
    except RasterError as err:
        if not _use_opencv(path, err):
            raise
        return _cv2_window(path, (row, col, height, width), bands, fill, fill_invalid, err)
    if inner is not None and not inner.all():
        if fill_invalid:
            inside[~inner] = fv
        elif np.issubdtype(dtype, np.floating):
            inside[~np.isfinite(inside)] = fv
    valid[r0 - row : r1 - row, c0 - col : c1 - col] = True if inner is None else inner
    return out, valid


def _cv2_window(
    path: str,
    window: tuple[int, int, int, int],
    bands: Sequence[int] | None,
    fill: float,
    fill_invalid: bool,
    gdal_error: RasterError,
) -> tuple[np.ndarray, np.ndarray]:
    """`read_window` for images only OpenCV can decode (whole image decoded, then cropped)."""
    img = _cv2_read(path, gdal_error)
    info = _cv2_info(path, img)
    sel = check_bands(info, bands)
    row, col, height, width = window
    fv = _fill_value(fill, img.dtype, path)
    out = np.full((height, width, len(sel)), fv, dtype=img.dtype)
    valid = np.zeros((height, width), dtype=bool)
    r0, r1 = max(row, 0), min(row + height, info.height)
    c0, c1 = max(col, 0), min(col + width, info.width)
    if r0 < r1 and c0 < c1:
        part = img[r0:r1, c0:c1]
        inner = part[:, :, 3] > 0 if info.alpha_band else np.ones(part.shape[:2], bool)
        block = part[:, :, [b - 1 for b in sel]]
        if fill_invalid:
            block = np.where(inner[:, :, None], block, fv)
        out[r0 - row : r1 - row, c0 - col : c1 - col] = block
        valid[r0 - row : r1 - row, c0 - col : c1 - col] = inner
    return out, valid


def read_overview(
    path: str | os.PathLike[str], max_size: int = 1024, bands: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Whole image decimated so its longer side is at most `max_size` (uses overviews when present).

    Returns (h, w, C) pixels in native dtype and the (h, w) validity, like `read_window`; for quicklooks.
    """
    path = os.fspath(path)
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    try:
        with _open(path) as ds:
            info = _info_from_dataset(path, ds)
            sel = check_bands(info, bands)
            scale = max(1.0, max(info.height, info.width) / max_size)
            h = max(1, min(info.height, round(info.height / scale)))
            w = max(1, min(info.width, round(info.width / scale)))
            try:
                data = ds.read(list(sel), out_shape=(len(sel), h, w), resampling=Resampling.nearest)
                mask_idx = [b for b in sel if b != info.alpha_band] or [1]
                masks = ds.read_masks(mask_idx, out_shape=(len(mask_idx), h, w), resampling=Resampling.nearest)
            except Exception as e:
                raise RasterError(f"{path}: overview read failed ({_cause(e)})") from None
    except RasterError as err:
        if not _use_opencv(path, err):
            raise
        import cv2

        img = _cv2_read(path, err)
        info = _cv2_info(path, img)
        sel = check_bands(info, bands)
        scale = max(1.0, max(info.height, info.width) / max_size)
        h, w = max(1, round(info.height / scale)), max(1, round(info.width / scale))
        small = cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST).reshape(h, w, -1)
        valid = small[:, :, 3] > 0 if info.alpha_band else np.ones((h, w), bool)
        return small[:, :, [b - 1 for b in sel]], valid
    valid = np.any(masks != 0, axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return data.transpose(1, 2, 0), valid


def path_stem(path: str | os.PathLike[str]) -> str:
    """File name without its raster extension (`a/b/scene.tif` -> `scene`)."""
    name = Path(os.fspath(path)).name
    end = _ending(name)
    return name[: -len(end)] if end and end in RASTER_EXTENSIONS else name
