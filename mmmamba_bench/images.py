"""Decoded images to what the model reads: 8-bit RGB, whatever mode and bit depth PIL opened (no torch here)."""

from __future__ import annotations

import numpy as np
from PIL import Image

HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image PIL opens -> 8-bit RGB, with the bit depth normalised.

    ``Image.convert("RGB")`` clips high-depth grey images instead of scaling them (a 16-bit PNG becomes near-white),
    so those are scaled here: 16-bit (``I;16*``) by 255 / 65535; 32-bit integer (``I``) as 8-bit when its values lie
    in [0, 255], as 16-bit in [0, 65535]; float (``F``) as [0, 1] or [0, 255]. Anything else (palette, alpha, CMYK,
    ...) goes through ``convert("RGB")`` as the reference evaluation does (alpha is dropped, not composited).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in HIGH_DEPTH_MODES:
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if mode.startswith("I;16"):
            full = 65535.0
        elif mode == "I" and lo >= 0 and hi <= 255:
            full = 255.0
        elif mode == "I" and lo >= 0 and hi <= 65535:
            full = 65535.0
        elif mode == "F" and lo >= 0 and hi <= 1:
            full = 1.0
        elif mode == "F" and lo >= 0 and hi <= 255:
            full = 255.0
        else:
            raise ValueError(f"image mode {mode!r} with values in [{lo:g}, {hi:g}]: cannot tell its bit depth "
                             f"(expected [0, 1] or [0, 255] for F, [0, 255] or [0, 65535] for I)")
        grey = np.clip(np.rint(arr * (255.0 / full)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"image mode {mode!r} cannot be converted to RGB ({exc})") from None
