"""Polygons of a class mask, block by block, joined into exactly what one whole-image pass gives (pure: no I/O, no Ray).

Coordinates are GLOBAL PIXEL coordinates (x = column, y = row, pixel corners on integers), so every vertex is an
integer and the join below is exact in floating point; the I/O shell maps them to the image's CRS afterwards.

Connectivity is 4 (edge neighbours), the default of `rasterio.features.shapes` and of GDAL's Polygonize: two
pixels of one class that touch only at a corner belong to two objects, whose polygons share one vertex. The
block step labels 4-connected components with OpenCV and polygonises the labels with `rasterio.features.shapes`
(also 4-connected), so one component gives one polygon, and its pixel count and probability sum come with it.

A polygon whose bounds reach a block edge that has a neighbouring block is a *border piece*; all others are
*interior* and final. Two border pieces belong to one object iff they are of the same class and share a stretch
of boundary of positive length (pixels adjacent across the block border); corner contacts across a block corner
are a single point and, as in the whole-image pass, do not join. Each connected set of pieces is unioned.
Result: the same polygons (point sets) as `rasterio.features.shapes(mask, mask=isin(mask, classes),
connectivity=4)` on the whole mask. Every output polygon is put in a canonical form (collinear vertices removed,
`shapely.normalize`), so clean-up that depends on vertices (Douglas-Peucker) cannot depend on the block plan.

Memory: one block's arrays plus the border pieces (a strip one polygon wide along each block border).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from affine import Affine
from rasterio import features

from tileseg.grid import Window

CONNECTIVITY = 4
"""Pixel connectivity of an object (edge neighbours), as in `rasterio.features.shapes`' default."""


@dataclass(frozen=True)
class Piece:
    """One polygon of one class in global pixel coordinates, with its pixel count and probability sum."""

    class_id: int
    geometry: shapely.Polygon
    pixels: int
    prob_sum: float = float("nan")  # sum of the class probability over the pixels (NaN: no probabilities)


@dataclass(frozen=True)
class BlockPolygons:
    """What one block yields: final interior polygons, and border pieces still to be joined with neighbours."""

    window: Window
    interior: tuple[Piece, ...]
    border: tuple[Piece, ...]


def canonical(geoms: np.ndarray | Sequence[shapely.Geometry]) -> np.ndarray:
    """Collinear vertices removed (exact for pixel polygons) and rings normalised: one form per point set."""
    return shapely.normalize(shapely.simplify(np.asarray(geoms, dtype=object), 0.0, preserve_topology=False))


def block_windows(height: int, width: int, block: int) -> list[Window]:
    """Row-major `block` x `block` windows covering a height x width image (clipped at the edges)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    return [
        Window(r, c, min(block, height - r), min(block, width - c))
        for r in range(0, height, block)
        for c in range(0, width, block)
    ]


def block_polygons(
    values: np.ndarray,
    window: Window,
    image_shape: tuple[int, int],
    classes: Sequence[int],
    probability: np.ndarray | None = None,
) -> BlockPolygons:
    """Polygons of `classes` in one block `values` (h, w) at `window` of an image of `image_shape` (H, W).

    `probability` (len(classes), h, w), optional: per-class probabilities aligned with `classes`; NaN allowed
    outside the class. Values not in `classes` (nodata 255 included) never become polygons.
    """
    values, window = np.asarray(values), Window(*window)
    h, w = values.shape
    if (h, w) != (window.height, window.width):
        raise ValueError(f"block of shape {values.shape} does not match window {tuple(window)}")
    H, W = image_shape
    # Block edges with a neighbour: only polygons reaching one of these can continue in another block.
    x0, y0, x1, y1 = window.col, window.row, window.col + w, window.row + h
    edges = (x0 > 0, y0 > 0, x1 < W, y1 < H)
    interior: list[Piece] = []
    border: list[Piece] = []
    for piece in _pieces(values, window, classes, probability):
        bx0, by0, bx1, by1 = piece.geometry.bounds
        touches = (
            (edges[0] and bx0 == x0) or (edges[1] and by0 == y0) or (edges[2] and bx1 == x1) or (edges[3] and by1 == y1)
        )
        (border if touches else interior).append(piece)
    return BlockPolygons(window, _canonical_pieces(interior), tuple(border))


def _polygon(geom: dict) -> shapely.Polygon:
    """A GeoJSON-like polygon from rasterio as a shapely Polygon (rings through NumPy: fast)."""
    rings = [np.asarray(r, dtype=np.float64) for r in geom["coordinates"]]
    return shapely.Polygon(rings[0], rings[1:])


def _pieces(
    values: np.ndarray, window: Window, classes: Sequence[int], probability: np.ndarray | None
) -> Iterator[Piece]:
    """Every polygon of `classes` in the block, in global pixel coordinates.

    Without probabilities the mask itself is polygonised (the pixel count is the polygon's area, exact for
    pixel polygons). With them, 4-connected components are labelled first (OpenCV), so that each polygon's
    probability sum comes from a bincount over its label; the label image gives the same polygons.
    """
    transform = Affine.translation(window.col, window.row)
    if probability is None:
        if values.dtype == np.uint8:  # a table lookup: several times faster than np.isin on a block
            lut = np.zeros(256, dtype=bool)
            lut[list(classes)] = True
            sel = lut[values]
        else:
            sel = np.isin(values, list(classes))
        if not sel.any():
            return
        for geom, value in features.shapes(values, mask=sel, connectivity=CONNECTIVITY, transform=transform):
            poly = _polygon(geom)
            yield Piece(int(value), poly, int(round(poly.area)))
        return
    h, w = values.shape
    labels = np.zeros((h, w), dtype=np.int32)
    owner: list[int] = [-1]  # label -> class id (label 0 = not an object)
    pixels: list[np.ndarray] = [np.zeros(1, np.int64)]
    sums: list[np.ndarray] = [np.zeros(1)]
    for k, class_id in enumerate(classes):
        hit = values == class_id
        if not hit.any():
            continue
        n, lab, stats, _ = cv2.connectedComponentsWithStats(
            hit.view(np.uint8), connectivity=CONNECTIVITY, ltype=cv2.CV_32S
        )
        labels[hit] = lab[hit] + len(owner) - 1
        owner.extend([int(class_id)] * (n - 1))
        pixels.append(stats[1:, cv2.CC_STAT_AREA].astype(np.int64))
        p = np.where(hit, np.nan_to_num(np.asarray(probability[k], dtype=np.float64)), 0.0)
        sums.append(np.bincount(lab.ravel(), weights=p.ravel(), minlength=n)[1:])
    if len(owner) == 1:
        return
    px, ps = np.concatenate(pixels), np.concatenate(sums)
    for geom, value in features.shapes(labels, mask=labels > 0, connectivity=CONNECTIVITY, transform=transform):
        label = int(value)
        yield Piece(owner[label], _polygon(geom), int(px[label]), float(ps[label]))


def _canonical_pieces(pieces: Sequence[Piece]) -> tuple[Piece, ...]:
    if not pieces:
        return ()
    geoms = canonical([p.geometry for p in pieces])
    return tuple(Piece(p.class_id, g, p.pixels, p.prob_sum) for p, g in zip(pieces, geoms, strict=True))


def join_pieces(pieces: Sequence[Piece]) -> list[Piece]:
    """Merge border pieces of one class that share boundary of positive length; one Piece per object.

    Candidate pairs come from an STRtree ("touches": interiors disjoint, boundaries meet); a pair joins when
    its boundaries meet in a line (DE-9IM boundary/boundary dimension 1), never at a single corner point.
    """
    if not pieces:
        return []
    geoms = np.array([p.geometry for p in pieces], dtype=object)
    cls = np.array([p.class_id for p in pieces])
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="touches")
    keep = (left < right) & (cls[left] == cls[right])
    left, right = left[keep], right[keep]
    if left.size:
        line = shapely.relate_pattern(geoms[left], geoms[right], "F***1****")
        left, right = left[line], right[line]
    parent = np.arange(len(pieces))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(find(i), []).append(i)
    joined: list[Piece] = []
    for members in groups.values():
        first = pieces[members[0]]
        if len(members) == 1:
            geom = first.geometry
        else:
            geom = shapely.union_all(geoms[members])
            if geom.geom_type != "Polygon":  # pieces joined by edges always make one polygon
                raise AssertionError(f"joined pieces of class {first.class_id} gave a {geom.geom_type}")
        sums = [pieces[i].prob_sum for i in members]
        joined.append(Piece(first.class_id, geom, sum(pieces[i].pixels for i in members), float(np.sum(sums))))
    return list(_canonical_pieces(joined))


def vectorize_blocks(blocks: Iterable[BlockPolygons]) -> list[Piece]:
    """Final objects from a stream of block results: interior pieces as they come, then the joined borders."""
    out: list[Piece] = []
    border: list[Piece] = []
    for b in blocks:
        out.extend(b.interior)
        border.extend(b.border)
    out.extend(join_pieces(border))
    return out


def vectorize_array(
    values: np.ndarray, classes: Sequence[int], block: int | None = None, probability: np.ndarray | None = None
) -> list[Piece]:
    """All objects of `classes` in an in-memory mask, computed block by block (`block` None: one block)."""
    values = np.asarray(values)
    H, W = values.shape
    wins = block_windows(H, W, block or max(H, W, 1))

    def one(win: Window) -> BlockPolygons:
        sl = np.s_[win.row : win.row + win.height, win.col : win.col + win.width]
        prob = None if probability is None else probability[(slice(None), *sl)]
        return block_polygons(values[sl], win, (H, W), classes, prob)

    return vectorize_blocks(one(win) for win in wins)
