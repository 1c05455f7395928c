"""Building footprints at scale: a stored mask -> exact polygons block by block -> clean-up -> vector files.

`core` (pure: block polygons and their exact join), `clean` (pure: holes, area, simplify, regularise),
`shell` (store I/O, Ray tasks, CRS, attributes), `write` (GeoParquet, GeoPackage, FlatGeobuf, GeoJSON) and
`options` (the `tileseg vectorize` command, generated from one frozen dataclass).
"""

from tileseg.vectorize.clean import Cleanup
from tileseg.vectorize.core import CONNECTIVITY, Piece, vectorize_array
from tileseg.vectorize.shell import VectorizeError, vectorize_group, vectorize_store
from tileseg.vectorize.write import write_vectors

__all__ = [
    "CONNECTIVITY",
    "Cleanup",
    "Piece",
    "VectorizeError",
    "vectorize_array",
    "vectorize_group",
    "vectorize_store",
    "write_vectors",
]
