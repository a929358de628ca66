"""Image primitives of the mini-suite: random crops of real photos, coloured handwritten digits, grids, PNG bytes.

All randomness comes from the ``numpy.random.Generator`` passed in, so a given seed gives the same pixels.
Arrays are ``[H, W, 3]`` uint8 RGB.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

IMAGE_SIZE = 64  # every mini-suite image is IMAGE_SIZE x IMAGE_SIZE
CELL = IMAGE_SIZE // 2  # grid cell side

COLORS: dict[str, tuple[float, float, float]] = {  # ink colour of a digit, as RGB gains
    "red": (1.0, 0.12, 0.12),
    "green": (0.15, 0.9, 0.15),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (1.0, 0.95, 0.1),
    "white": (1.0, 1.0, 1.0),
}


def crop_photo(photo: np.ndarray, rng: np.random.Generator, size: int, min_frac: float = 0.6) -> np.ndarray:
    """A random square crop (side ``min_frac``-1.0 of the shorter side), maybe mirrored, resized to ``size``."""
    h, w = photo.shape[:2]
    side = int(round(min(h, w) * rng.uniform(min_frac, 1.0)))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = photo[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BILINEAR))


def digit_tile(
    digit: np.ndarray,
    rng: np.random.Generator,
    size: int,
    color: str = "white",
    scale: tuple[float, float] = (0.55, 0.9),
    inverted: bool = False,
    background: float = 0.85,
) -> np.ndarray:
    """An 8x8 sklearn digit (ink 0-16) drawn ``scale`` x ``size`` px large at a random place on a ``size`` tile.

    Ink in ``color`` on black, or (``inverted``) dark ink on a light grey ``background`` (0-1).
    """
    side = max(8, int(round(size * rng.uniform(*scale))))
    ink = Image.fromarray((np.clip(digit, 0, 16) * (255.0 / 16.0)).astype(np.uint8))
    ink = np.asarray(ink.resize((side, side), Image.Resampling.BILINEAR)).astype(np.float32) / 255.0
    canvas = np.zeros((size, size), np.float32)
    top = int(rng.integers(0, size - side + 1))
    left = int(rng.integers(0, size - side + 1))
    canvas[top : top + side, left : left + side] = ink
    gain = np.asarray(COLORS[color], np.float32)
    if inverted:
        rgb = np.float32(background) * (1.0 - canvas[..., None] * (1.0 - 0.2 * gain))
    else:
        rgb = canvas[..., None] * gain
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def blank(height: int, width: int) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def grid(cells: list[np.ndarray | None], rows: int, cols: int) -> np.ndarray:
    """Place ``rows`` x ``cols`` equally sized tiles row-major; ``None`` leaves a black cell."""
    shapes = {c.shape for c in cells if c is not None}
    if len(cells) != rows * cols or len(shapes) != 1:
        raise ValueError(f"grid needs {rows * cols} tiles of one shape, got {len(cells)} with shapes {shapes}")
    (h, w, _), = shapes
    out = blank(rows * h, cols * w)
    for i, cell in enumerate(cells):
        if cell is not None:
            r, c = divmod(i, cols)
            out[r * h : (r + 1) * h, c * w : (c + 1) * w] = cell
    return out


def in_column(tile: np.ndarray, rng: np.random.Generator, height: int) -> np.ndarray:
    """Put a square tile at a random height in a black column ``height`` px tall (for left/right compositions)."""
    side = tile.shape[0]
    out = blank(height, tile.shape[1])
    top = int(rng.integers(0, height - side + 1))
    out[top : top + side] = tile
    return out


def to_png(image: np.ndarray) -> bytes:
    """Encode as PNG with fixed settings and no metadata (the same pixels always give the same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
