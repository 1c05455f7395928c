"""tileseg: seamless segmentation of huge images with an attention U-Net on Ray.

`predict_array` stitches any tile predictor over an in-memory image (pure NumPy); the rest of the
package (the Ray job, training, evaluation) is reached through the `tileseg` command or its modules.
"""

from tileseg.stitch import predict_array, predict_array_with_counts

__version__ = "0.1.0"
__all__ = ["predict_array", "predict_array_with_counts", "__version__"]
