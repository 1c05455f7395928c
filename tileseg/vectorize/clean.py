"""Clean-up of joined polygons (pure): fill small holes, drop small objects, simplify, regularise buildings.

It runs on the FINAL objects (after the join, in pixel coordinates), so it cannot depend on the block plan:
`core` hands over one canonical vertex ring per point set, and every step here is a function of its input
polygon only. Order: fill holes -> minimum area -> simplify -> regularise (so area limits use exact pixel
areas, and regularisation sees straight walls rather than pixel staircases).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import shapely

AreaFn = Callable[[np.ndarray], np.ndarray]
"""Areas of an array of polygons (pixel coordinates) in one unit (px, or m2 for a georeferenced image)."""
AREA_UNITS = ("px", "m2")

MIN_REGULARIZE_SIMPLIFY = 2.0
"""Simplify tolerance (px) applied before regularising at least: pixel staircases are not walls."""


@dataclass(frozen=True)
class Cleanup:
    """Clean-up settings; an area threshold's unit None means the image's own area unit (m2 with a CRS, else px)."""

    simplify: float = 0.0  # Douglas-Peucker tolerance in pixels, topology-preserving (0 = off)
    min_area: float = 0.0  # drop objects smaller than this (after filling holes)
    min_area_unit: str | None = None
    fill_holes: float = 0.0  # fill holes smaller than this
    fill_holes_unit: str | None = None
    regularize: bool = False  # orthogonalise near-right angles (buildings)
    angle_tolerance: float = 15.0  # degrees from the dominant axes within which an edge is snapped


def fill_holes(geoms: np.ndarray, below: float, area: AreaFn) -> np.ndarray:
    """Polygons with every hole of area < `below` filled (holes at or above it kept)."""
    geoms = np.asarray(geoms, dtype=object)
    if below <= 0 or geoms.size == 0:
        return geoms
    out = geoms.copy()
    n_holes = shapely.get_num_interior_rings(geoms)
    for i in np.flatnonzero(n_holes):
        g = geoms[i]
        rings = [shapely.Polygon(r) for r in g.interiors]
        keep = area(np.array(rings, dtype=object)) >= below
        out[i] = shapely.Polygon(g.exterior, [r.coords for r, k in zip(g.interiors, keep, strict=True) if k])
    return out


def simplify(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker with `tolerance` px that keeps each polygon valid (no self-intersection, holes inside)."""
    geoms = np.asarray(geoms, dtype=object)
    return geoms if tolerance <= 0 else shapely.simplify(geoms, tolerance, preserve_topology=True)


def dominant_angle(ring: np.ndarray) -> float:
    """Direction (radians, in [-pi/4, pi/4)) of the ring's main axes: length-weighted mean of 4x edge angles."""
    d = np.diff(ring, axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    phi = np.arctan2(d[:, 1], d[:, 0])
    return float(np.arctan2(np.sum(length * np.sin(4 * phi)), np.sum(length * np.cos(4 * phi))) / 4)


def _rotate(xy: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return xy @ np.array([[c, s], [-s, c]])


def _regularize_ring(ring: np.ndarray, theta: float, tol: float) -> np.ndarray | None:
    """Ring (closed, pixel coords) with near-axis edge runs snapped to lines on the axes; None if degenerate."""
    centre = ring[:-1].mean(axis=0)
    pts = _rotate(ring[:-1] - centre, -theta)  # open ring, axes now along x and y
    n = len(pts)
    d = np.roll(pts, -1, axis=0) - pts  # edge i: pts[i] -> pts[i+1]
    length = np.hypot(d[:, 0], d[:, 1])
    ang = np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 180.0
    kind = np.full(n, "O")
    kind[np.minimum(ang, 180.0 - ang) <= tol] = "H"
    kind[np.abs(ang - 90.0) <= tol] = "V"
    if n < 4 or (kind == kind[0]).all():
        return None
    start = int(np.flatnonzero(kind != np.roll(kind, 1))[0])  # first edge that starts a run
    order = np.roll(np.arange(n), -start)
    runs: list[tuple[str, list[int]]] = []
    for i in order:
        if runs and runs[-1][0] == kind[i] and kind[i] != "O":
            runs[-1][1].append(int(i))
        else:
            runs.append((str(kind[i]), [int(i)]))
    if len(runs) > 1 and runs[0][0] == runs[-1][0] != "O":
        return None  # cannot happen after the roll above; guard anyway
    level = []  # the line of each H (y) / V (x) run: length-weighted mean of its edge midpoints
    for k, edges in runs:
        mid = (pts[edges] + pts[[(e + 1) % n for e in edges]]) / 2
        axis = 1 if k == "H" else 0
        level.append(float(np.average(mid[:, axis], weights=length[edges])) if k != "O" else math.nan)
    out: list[tuple[float, float]] = []
    for r, (k, edges) in enumerate(runs):
        prev_k, prev_level = runs[r - 1][0], level[r - 1]
        v = pts[edges[0]]  # the vertex where the previous run ends and this one starts
        x, y = float(v[0]), float(v[1])
        for kk, lv in ((prev_k, prev_level), (k, level[r])):
            if kk == "H":
                y = lv
            elif kk == "V":
                x = lv
        out.append((x, y))
        if k == "O":  # an oblique run keeps its inner vertices
            out.extend((float(pts[e][0]), float(pts[e][1])) for e in edges[1:])
    xy = _rotate(np.array(out), theta) + centre
    return np.vstack([xy, xy[:1]])


def regularize(geom: shapely.Polygon, angle_tolerance: float = 15.0) -> shapely.Polygon:
    """Orthogonalise a building outline: walls within `angle_tolerance` of its main axes become exactly parallel.

    Method: the main axes are the length-weighted circular mean of 4x the edge directions of the exterior (so
    directions 90 degrees apart agree). Rotated onto those axes, each edge is horizontal, vertical or oblique
    by its angle; consecutive horizontal (vertical) edges form one wall, placed on the length-weighted mean
    y (x) of their midpoints; each vertex between two walls becomes their intersection, a vertex between a
    wall and an oblique edge is moved onto the wall, oblique vertices stay. Holes use the same axes. When the
    result is invalid or changes the area by more than 25 % the input polygon is returned unchanged.
    """
    if geom.is_empty:
        return geom
    ext = np.asarray(geom.exterior.coords)
    theta = dominant_angle(ext)
    shell = _regularize_ring(ext, theta, angle_tolerance)
    if shell is None:
        return geom
    holes = []
    for ring in geom.interiors:
        r = np.asarray(ring.coords)
        reg = _regularize_ring(r, theta, angle_tolerance)
        holes.append(r if reg is None else reg)
    out = shapely.Polygon(shell, holes)
    out = shapely.simplify(shapely.remove_repeated_points(out), 0.0, preserve_topology=False)  # drop collinear
    if not out.is_valid or out.is_empty or not 0.8 <= out.area / geom.area <= 1.25:
        return geom
    return shapely.normalize(out)


def clean(
    geoms: np.ndarray, cleanup: Cleanup, areas: dict[str, AreaFn], default_unit: str
) -> tuple[np.ndarray, np.ndarray]:
    """(cleaned polygons, indices of the input they come from) after every step of `cleanup`, in order.

    `areas` maps each unit the image supports ("px", and "m2" when georeferenced) to its area function.
    """
    for unit in (cleanup.fill_holes_unit, cleanup.min_area_unit):
        if unit is not None and unit not in areas:
            raise ValueError(f"area unit {unit!r} not available here (have {', '.join(areas)})")
    geoms = fill_holes(
        np.asarray(geoms, dtype=object), cleanup.fill_holes, areas[cleanup.fill_holes_unit or default_unit]
    )
    index = np.arange(len(geoms))
    if cleanup.min_area > 0 and len(geoms):
        keep = areas[cleanup.min_area_unit or default_unit](geoms) >= cleanup.min_area
        geoms, index = geoms[keep], index[keep]
    tol = max(cleanup.simplify, MIN_REGULARIZE_SIMPLIFY) if cleanup.regularize else cleanup.simplify
    geoms = simplify(geoms, tol)
    if cleanup.regularize:
        geoms = np.array([regularize(g, cleanup.angle_tolerance) for g in geoms], dtype=object)
    return geoms, index
