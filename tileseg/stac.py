"""STAC input: a STAC Item or ItemCollection (plain JSON, a local file or a URL) names the images to segment.

Pure parsing functions and one small frozen dataclass; no STAC library. Each item gives one image: the
asset named by `--asset`, or else the first asset whose roles include "data" or "visual" or whose media
type is a GeoTIFF (image/tiff, any profile). Relative hrefs are resolved against where the JSON was read.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from tileseg.errors import RasterError
from tileseg.uri import is_remote, is_uri, redact, scheme, url_of

__all__ = ["StacImage", "expand", "is_stac", "items_of", "pick_asset", "read_json", "resolve_href", "split_inputs"]

_IMAGE_ROLES = ("data", "visual")


@dataclass(frozen=True)
class StacImage:
    """One item's chosen asset: what to read (`href`, absolute) and what to record about it."""

    href: str
    item_id: str
    asset: str
    datetime: str | None
    self_link: str | None
    source: str  # the JSON it came from

    def record(self) -> dict[str, Any]:
        """The group's `stac` attribute (hrefs without credentials)."""
        return {
            "item_id": self.item_id,
            "datetime": self.datetime,
            "asset": self.asset,
            "href": redact(self.href),
            "self": redact(self.self_link) if self.self_link else None,
            "source": redact(self.source),
        }


def is_stac(path: str | os.PathLike[str]) -> bool:
    """Whether an input names a STAC JSON document (by its name: `.json` or `.geojson`)."""
    name = urlsplit(url_of(os.fspath(path))).path if is_uri(path) else os.fspath(path)
    return name.lower().endswith((".json", ".geojson"))


def read_json(location: str) -> Any:
    """The JSON document at a local path or URL (fsspec for s3://, https://, ...); RasterError naming it."""
    url = url_of(location)
    try:
        if is_remote(url):
            import fsspec

            with fsspec.open(url, "rb") as f:
                text = f.read()
        else:
            text = Path(location).expanduser().read_bytes()
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RasterError(f"{redact(location)}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except Exception as exc:  # noqa: BLE001 - each store fails its own way: one line saying why
        why = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        raise RasterError(f"{redact(location)}: cannot read the STAC document ({redact(why)})") from None


def items_of(doc: Any, location: str) -> list[Mapping[str, Any]]:
    """The items of a STAC Item or ItemCollection (a GeoJSON FeatureCollection of items)."""
    if isinstance(doc, Mapping) and doc.get("type") == "Feature":
        return [doc]
    if isinstance(doc, Mapping) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
        return [f for f in doc["features"] if isinstance(f, Mapping)]
    raise RasterError(f"{redact(location)}: not a STAC Item or ItemCollection (no 'type': 'Feature' or features)")


def _is_image(asset: Mapping[str, Any]) -> bool:
    roles = asset.get("roles") or []
    media = str(asset.get("type") or "").lower().replace(" ", "")
    return any(r in _IMAGE_ROLES for r in roles) or media.split(";")[0] in ("image/tiff", "image/geotiff")


def pick_asset(item: Mapping[str, Any], name: str | None, label: str) -> tuple[str, Mapping[str, Any]]:
    """(key, asset) of the item's image: `name` if given, else the first data/visual/GeoTIFF asset."""
    assets = item.get("assets") if isinstance(item.get("assets"), Mapping) else {}
    listed = ", ".join(map(str, assets)) or "none"
    if name is not None:
        if name not in assets or not isinstance(assets[name], Mapping) or not assets[name].get("href"):
            raise RasterError(f"{label}: no asset {name!r} with an href (assets: {listed})")
        return name, assets[name]
    for key, asset in assets.items():
        if isinstance(asset, Mapping) and asset.get("href") and _is_image(asset):
            return str(key), asset
    raise RasterError(f"{label}: no image asset (role data/visual or type image/tiff; assets: {listed}); use --asset")


def resolve_href(href: str, location: str) -> str:
    """An asset href made absolute: URLs and absolute paths as they are, relative ones against `location`."""
    if is_uri(href) or os.path.isabs(href):
        return href
    base = url_of(location)
    if scheme(base) in ("http", "https"):
        return urljoin(base, href)
    if "://" in base:  # s3://, gs://, az://: urljoin does not know them
        parts = urlsplit(base)
        path = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path) or "/", href))
        return f"{parts.scheme}://{parts.netloc}{path}"
    return posixpath.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))


def _self_link(item: Mapping[str, Any]) -> str | None:
    for link in item.get("links") or []:
        if isinstance(link, Mapping) and link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


def expand(
    location: str, asset: str | None = None, doc: Any = None
) -> tuple[list[StacImage], list[tuple[str, RasterError]]]:
    """The images a STAC document names, and (label, error) for each item without a usable asset.

    A document that cannot be read or is not STAC raises RasterError naming it. `doc` skips the read.
    """
    doc = read_json(location) if doc is None else doc
    images: list[StacImage] = []
    errors: list[tuple[str, RasterError]] = []
    for n, item in enumerate(items_of(doc, location)):
        item_id = str(item.get("id") or f"item-{n + 1}")
        label = f"{redact(location)}#{item_id}"
        try:
            key, chosen = pick_asset(item, asset, label)
        except RasterError as exc:
            errors.append((label, exc))
            continue
        props = item.get("properties") if isinstance(item.get("properties"), Mapping) else {}
        when = props.get("datetime") or props.get("start_datetime")
        href = resolve_href(str(chosen["href"]), location)
        images.append(StacImage(href, item_id, key, None if when is None else str(when), _self_link(item), location))
    return images, errors


def split_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(raster inputs, STAC documents) of a job's inputs, each in the order given."""
    return [i for i in inputs if not is_stac(i)], [i for i in inputs if is_stac(i)]
