"""Synthetic photos and ImageNet-style folders of them: what the tests and the benchmarks build
shards from when the real images are absent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like test image: smooth gradients, edges and some texture (not pure noise,
    so codecs behave as on real images)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([
        128 + 100 * np.sin(x / (9 + seed % 5)) * np.cos(y / 13),
        128 + 90 * np.cos((x + y) / 17),
        255 * (x / max(w - 1, 1)) * (y / max(h - 1, 1)),
    ], axis=-1)
    img[h // 4: h // 2, w // 3: 2 * w // 3] = (220, 40, 60)  # a flat object with sharp edges
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, classes=("n01440764", "n02102040"), per_class: int = 3,
                      size=(300, 240), split: str | None = "train", seed: int = 0) -> Path:
    """An ImageNet-style folder root/<split>/<class>/<image>.JPEG of synthetic photos.
    Returns the split folder (or root when split is None)."""
    base = root / split if split else root
    for ci, cls in enumerate(classes):
        d = base / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = size
            arr = synthetic_rgb(h + 7 * i, w + 5 * ci, seed=seed + 10 * ci + i)
            Image.fromarray(arr).save(d / f"{cls}_{i:04d}.JPEG", quality=95)
    return base
