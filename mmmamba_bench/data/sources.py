"""The real images the mini-suite is built from: photos bundled with scikit-image / scikit-learn and sklearn's digits.

Everything here loads offline from the installed packages. Photos are kept as small RGB arrays (shorter side
``PHOTO_SIDE`` px) so that random crops are cheap; digits are sklearn's 8x8 ink intensities (0-16) with their labels,
split once into disjoint train / validation / test pools so that no handwritten digit instance crosses splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PHOTO_SIDE = 160  # shorter side of the cached photos, in px

# name used in questions -> (package, loader name). All single words, all load offline.
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "astronaut"),
    "photographer": ("skimage", "camera"),
    "cat": ("skimage", "chelsea"),
    "coffee": ("skimage", "coffee"),
    "coins": ("skimage", "coins"),
    "horse": ("skimage", "horse"),
    "rocket": ("skimage", "rocket"),
    "moon": ("skimage", "moon"),
    "clock": ("skimage", "clock"),
    "galaxy": ("skimage", "hubble_deep_field"),
    "flower": ("sklearn", "flower.jpg"),
    "temple": ("sklearn", "china.jpg"),
}
TEXTURES: dict[str, tuple[str, str]] = {
    "brick": ("skimage", "brick"),
    "grass": ("skimage", "grass"),
    "gravel": ("skimage", "gravel"),
}

SPLITS = ("train", "validation", "test")
DIGIT_SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


@dataclass(frozen=True)
class Digits:
    """One split's pool of handwritten digits: ``images[i]`` (8x8, ink 0-16) shows the digit ``labels[i]``."""

    images: np.ndarray  # [N, 8, 8] float32
    labels: np.ndarray  # [N] int64
    indices: np.ndarray  # [N] rows of sklearn's load_digits() (disjoint between splits)

    def indices_of(self, digit: int) -> np.ndarray:
        return np.flatnonzero(self.labels == digit)


@dataclass(frozen=True)
class Sources:
    """All source images: photos and textures by name (RGB uint8), digit pools by split."""

    photos: dict[str, np.ndarray]
    textures: dict[str, np.ndarray]
    digits: dict[str, Digits]


def _load_array(package: str, name: str) -> np.ndarray:
    if package == "skimage":
        import skimage.data

        arr = getattr(skimage.data, name)()
    elif package == "sklearn":
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name)
    else:
        raise ValueError(f"unknown image package {package!r}")
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def _shrink(arr: np.ndarray, side: int = PHOTO_SIDE) -> np.ndarray:
    h, w = arr.shape[:2]
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS))


def split_digits(seed: int) -> dict[str, Digits]:
    """Disjoint digit pools per split, stratified by label, from a permutation fixed by ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32)
    labels = data.target.astype(np.int64)
    rng = np.random.default_rng([seed, 7001])
    pools: dict[str, list[int]] = {s: [] for s in SPLITS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_train = int(round(len(idx) * DIGIT_SPLIT_FRACTIONS["train"]))
        n_val = int(round(len(idx) * DIGIT_SPLIT_FRACTIONS["validation"]))
        pools["train"] += idx[:n_train].tolist()
        pools["validation"] += idx[n_train : n_train + n_val].tolist()
        pools["test"] += idx[n_train + n_val :].tolist()
    out = {}
    for split, pool in pools.items():
        idx = np.asarray(sorted(pool))
        out[split] = Digits(images[idx], labels[idx], idx)
    return out


def load_sources(seed: int) -> Sources:
    """Load every source image (a second or so; no network)."""
    photos = {name: _shrink(_load_array(*src)) for name, src in PHOTOS.items()}
    textures = {name: _shrink(_load_array(*src)) for name, src in TEXTURES.items()}
    return Sources(photos=photos, textures=textures, digits=split_digits(seed))
