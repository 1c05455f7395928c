"""tileseg's exceptions: one root, so the CLI catches them once and prints one line.

Each names the file, store or option it is about. A per-image error (a bad raster) fails that image
only; the others stop the command with exit status 2.
"""

from __future__ import annotations


class TilesegError(Exception):
    """Anything tileseg refuses or cannot do, said in one line for the user."""


class OptionError(TilesegError, ValueError):
    """A command-line option (or its Python twin) has a value tileseg cannot use."""


class ArtifactError(TilesegError):
    """A model artifact that cannot or must not be loaded."""


class RasterError(TilesegError):
    """An input raster that cannot be opened or read; the message names the file."""


class UnrecognisedRasterError(RasterError):
    """GDAL could not open an existing, readable file as a raster (another decoder may still read it)."""


class StoreError(TilesegError, ValueError):
    """A Zarr store that cannot be created, resumed or read as a tileseg store."""


class StoreExistsError(StoreError, FileExistsError):
    """The output store exists and neither resuming nor replacing it was asked for."""


class DataError(TilesegError):
    """Training data that cannot be used (no pairs, mismatched grids, bad labels)."""


class EvaluationError(TilesegError, ValueError):
    """Predictions and truth that cannot be scored together."""
