"""STAC documents as inputs: which asset an item gives, where its href points, and how bad items are told."""

from __future__ import annotations

import json

import pytest

from tileseg import stac
from tileseg.errors import RasterError

COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _item(item_id: str, assets: dict, **props) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "properties": {"datetime": "2024-01-02T03:04:05Z", **props},
        "assets": assets,
        "links": [{"rel": "self", "href": f"https://example.org/items/{item_id}.json"}],
    }


def test_the_default_asset_is_the_first_data_visual_or_geotiff_one():
    thumb = {"href": "t.png", "type": "image/png", "roles": ["thumbnail"]}
    assert stac.pick_asset(_item("a", {"t": thumb, "cog": {"href": "c.tif", "type": COG}}), None, "x")[0] == "cog"
    assert stac.pick_asset(_item("a", {"t": thumb, "v": {"href": "v.jp2", "roles": ["visual"]}}), None, "x")[0] == "v"
    assert stac.pick_asset(_item("a", {"d": {"href": "d.tif", "roles": ["data"]}}), None, "x")[0] == "d"
    two = {"d": {"href": "d.tif", "roles": ["data"]}, "nir": {"href": "n.tif", "type": COG}}
    assert stac.pick_asset(_item("a", two), "nir", "x") == ("nir", two["nir"])
    with pytest.raises(RasterError, match=r"^items.json#a: no image asset .*assets: t\)"):
        stac.pick_asset(_item("a", {"t": thumb}), None, "items.json#a")
    with pytest.raises(RasterError, match=r"no asset 'red' .*assets: d, nir"):
        stac.pick_asset(_item("a", two), "red", "items.json#a")


def test_relative_hrefs_resolve_against_the_documents_location():
    assert stac.resolve_href("../scenes/a.tif", "s3://b/catalog/items/x.json") == "s3://b/catalog/scenes/a.tif"
    assert stac.resolve_href("a.tif", "/vsis3/b/cat/x.json") == "s3://b/cat/a.tif"
    assert stac.resolve_href("./a.tif", "https://h.org/c/x.json") == "https://h.org/c/a.tif"
    assert stac.resolve_href("s3://o/k.tif", "/data/x.json") == "s3://o/k.tif"
    assert stac.resolve_href("sub/a.tif", "/data/cat/x.json") == "/data/cat/sub/a.tif"
    assert stac.is_stac("s3://b/items.json") and stac.is_stac("/d/item.JSON") and not stac.is_stac("s3://b/a.tif")


def test_an_item_collection_expands_to_its_images_and_bad_items_fail_alone(tmp_path):
    good = _item("scene-1", {"image": {"href": "scenes/one.tif", "type": COG}})
    bare = _item("no-image", {"thumbnail": {"href": "t.png", "type": "image/png"}})
    doc = tmp_path / "items.json"
    doc.write_text(json.dumps({"type": "FeatureCollection", "features": [good, bare]}))
    images, errors = stac.expand(str(doc))
    assert [i.href for i in images] == [str(tmp_path / "scenes" / "one.tif")]
    record = images[0].record()
    assert record["item_id"] == "scene-1" and record["datetime"] == "2024-01-02T03:04:05Z"
    assert record["self"] == "https://example.org/items/scene-1.json" and record["asset"] == "image"
    assert [label for label, _ in errors] == [f"{doc}#no-image"] and "\n" not in str(errors[0][1])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(RasterError, match=r"broken.json: not JSON"):
        stac.expand(str(tmp_path / "broken.json"))
    (tmp_path / "other.json").write_text(json.dumps({"type": "Catalog"}))
    with pytest.raises(RasterError, match=r"other.json: not a STAC Item or ItemCollection"):
        stac.expand(str(tmp_path / "other.json"))
    with pytest.raises(RasterError, match=r"missing.json: cannot read the STAC document"):
        stac.expand(str(tmp_path / "missing.json"))


def test_an_item_read_over_http_resolves_hrefs_against_its_url(tmp_path):
    """A real web server on 127.0.0.1 serves the item; its relative asset href becomes a URL on that server."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    (tmp_path / "stac").mkdir()
    item = _item("web-1", {"visual": {"href": "../cogs/web-1.tif", "roles": ["visual"]}})
    (tmp_path / "stac" / "web-1.json").write_text(json.dumps(item))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        images, errors = stac.expand(f"{base}/stac/web-1.json")
        assert not errors and [(i.item_id, i.asset, i.href) for i in images] == [
            ("web-1", "visual", f"{base}/cogs/web-1.tif")
        ]
        with pytest.raises(RasterError, match=r"/stac/missing.json: cannot read the STAC document"):
            stac.expand(f"{base}/stac/missing.json")
    finally:
        server.shutdown()
        server.server_close()
