"""tileseg: seamless segmentation of huge images with an attention U-Net on Ray."""

__version__ = "0.1.0"
