"""Robust-training augmentations (NumPy/OpenCV): what a model meets in a city it has never seen.

Photometric ones work on raw pixels (h, w, C) float32 before normalisation, over a reference range `hi`
(255 for 8-bit data): colour (per-band gain, gamma, hue rotation), Gaussian blur, Gaussian noise and JPEG
artefacts.  The geometric one, scale, is done by the sampler when it reads a window (`scaled_window`,
`resize_sample`).  Every random number comes from the sample's own generator, drawn in a fixed order,
so sample i of epoch e stays a pure function of (seed, e, i).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augment:
    """Strengths (0 / 1 = off) and the probability each augmentation is applied to a sample."""

    scale: float = 1.0  # windows resampled by a factor in [1/scale, scale] (log-uniform); 1 = off
    blur: float = 0.0  # largest Gaussian blur sigma, in pixels
    noise: float = 0.0  # largest Gaussian noise sigma, as a fraction of the range `hi`
    jpeg: int = 0  # lowest JPEG quality (a quality in [jpeg, 95]); 0 = off
    colour: float = 0.0  # gain x(1 +- c) per band, gamma exp(+- c), hue rotation +- c * 60 degrees
    prob: float = 0.5  # probability that each augmentation is applied to a sample

    def __post_init__(self) -> None:
        if self.scale < 1 or self.blur < 0 or self.noise < 0 or self.colour < 0 or not 0 <= self.prob <= 1:
            raise ValueError(f"bad augmentation settings {self}")
        if self.jpeg and not 1 <= self.jpeg <= 95:
            raise ValueError(f"jpeg quality must be in 1..95 (0 = off), got {self.jpeg}")

    @property
    def photometric(self) -> bool:
        return bool(self.blur or self.noise or self.jpeg or self.colour)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def draw_scale(rng: np.random.Generator, aug: Augment) -> float:
    """The zoom factor of one sample: 1, or log-uniform in [1/scale, scale] with probability `prob`."""
    if aug.scale <= 1:
        return 1.0
    u, v = rng.random(), rng.uniform(-1.0, 1.0)
    return float(aug.scale**v) if u < aug.prob else 1.0


def resize_sample(
    image: np.ndarray, valid: np.ndarray, labels: np.ndarray, weights: np.ndarray, tile: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A window read at n x n resampled to tile x tile: pixels area/linear, valid, labels and weights nearest."""
    n = image.shape[0]
    if n == tile:
        return image, valid, labels, weights
    interp = cv2.INTER_AREA if n > tile else cv2.INTER_LINEAR
    size = (tile, tile)
    bands = [cv2.resize(np.ascontiguousarray(image[..., b]), size, interpolation=interp) for b in range(image.shape[2])]
    image = np.stack(bands, axis=-1).astype(np.float32)

    def nearest(a: np.ndarray) -> np.ndarray:
        return cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_NEAREST)

    out_valid = nearest(valid.astype(np.uint8)).astype(bool)
    return image, out_valid, nearest(labels.astype(np.int32)), nearest(weights.astype(np.float32))


def _hue_matrix(angle: float) -> np.ndarray:
    """Rotation by `angle` (radians) about the grey axis of RGB: hue changes, brightness does not."""
    k = np.full(3, 1 / math.sqrt(3))
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return (np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx).astype(np.float32)


def colour(x: np.ndarray, rng: np.random.Generator, strength: float, hi: float) -> np.ndarray:
    """Per-band gain, a gamma curve and (RGB, 3+ bands) a hue rotation, on raw pixels in [0, hi]."""
    c = x.shape[-1]
    gain = rng.uniform(1 - strength, 1 + strength, size=c).astype(np.float32)
    gamma = float(np.exp(rng.uniform(-strength, strength)))
    angle = float(rng.uniform(-strength, strength) * math.pi / 3)
    y = np.clip(x * gain / hi, 0.0, 1.0) ** gamma
    if c >= 3:
        y[..., :3] = np.clip(y[..., :3] @ _hue_matrix(angle).T, 0.0, 1.0)
    return (y * hi).astype(np.float32)


def blur(x: np.ndarray, rng: np.random.Generator, max_sigma: float) -> np.ndarray:
    """Gaussian blur with a sigma in [0.3, max_sigma] pixels (a softer sensor, a coarser source)."""
    sigma = float(rng.uniform(min(0.3, max_sigma), max_sigma))
    bands = [cv2.GaussianBlur(np.ascontiguousarray(x[..., b]), (0, 0), sigma) for b in range(x.shape[-1])]
    return np.stack(bands, axis=-1).astype(np.float32)


def noise(x: np.ndarray, rng: np.random.Generator, max_sigma: float, hi: float) -> np.ndarray:
    """Additive Gaussian noise with a sigma in [0, max_sigma * hi]."""
    sigma = float(rng.uniform(0.0, max_sigma)) * hi
    return (x + rng.normal(0.0, sigma, size=x.shape)).astype(np.float32)


def jpeg(x: np.ndarray, rng: np.random.Generator, min_quality: int, hi: float) -> np.ndarray:
    """A JPEG round trip at a quality in [min_quality, 95] (8-bit, RGB as one colour image when 3 bands)."""
    quality = int(rng.integers(min_quality, 96))
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    u8 = np.clip(np.rint(x / hi * 255.0), 0, 255).astype(np.uint8)
    if u8.shape[-1] == 3:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), params)
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    else:
        out = np.stack(
            [
                cv2.imdecode(cv2.imencode(".jpg", np.ascontiguousarray(u8[..., b]), params)[1], 0)
                for b in range(u8.shape[-1])
            ],
            axis=-1,
        )
    return (out.astype(np.float32) * (hi / 255.0)).astype(np.float32)


def photometric(x: np.ndarray, valid: np.ndarray, rng: np.random.Generator, aug: Augment, hi: float) -> np.ndarray:
    """Colour, blur, noise, JPEG (in that order, each with probability `aug.prob`) on raw pixels; invalid
    pixels keep their values.  Every draw is made whether or not its augmentation is on."""
    y = x
    for name in ("colour", "blur", "noise", "jpeg"):
        strength = getattr(aug, name)
        apply = rng.random() < aug.prob
        sub = np.random.default_rng(rng.integers(0, 2**63))  # one stream per augmentation, drawn always
        if not strength or not apply:
            continue
        if name == "colour":
            y = colour(y, sub, strength, hi)
        elif name == "blur":
            y = blur(y, sub, strength)
        elif name == "noise":
            y = noise(y, sub, strength, hi)
        else:
            y = jpeg(y, sub, int(strength), hi)
    return np.where(valid[..., None], y, x).astype(np.float32)


def reference_range(mean, std) -> float:
    """The raw range photometric augmentations work in: 255 for 8-bit data, else max(mean + 3 std)."""
    top = np.asarray(mean, np.float64) + 3 * np.asarray(std, np.float64)
    return 255.0 if (top <= 255 * 1.5).all() else float(top.max())
