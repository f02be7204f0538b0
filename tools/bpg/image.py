"""Any picture -> 8-bit RGB, the one conversion of the project: the BPG command's input, the
pipeline's crops (:mod:`pipeline.crops`) and every decoder's output (the receiver's and the
loader's, :mod:`pipeline.pixels`), so that all of them see the same pixels."""
from __future__ import annotations

import numpy as np
from PIL import Image

# 16-bit integer modes: Pillow's convert("RGB") clips them at 255 instead of scaling.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    - gray, palette, CMYK, YCbCr, LAB: Pillow's own conversion;
    - alpha (RGBA, LA, PA, palette with transparency): composited over white, which is how
      a viewer shows the image (dropping alpha would expose arbitrary hidden colours);
    - 16-bit gray ("I;16", or "I" from 16-bit PNG/TIFF): scaled by 255/65535, not clipped.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        # float images have no agreed range; assume 0..1 as most writers do
        arr = np.clip(np.rint(np.asarray(img) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_rgb_array(a) -> np.ndarray:
    """A Pillow image or a decoder's array -> H×W×3 uint8, by :func:`to_rgb`.

    Arrays are H×W (grey), H×W×1, H×W×2 (grey + alpha), H×W×3 or H×W×4 (+ alpha), of uint8,
    uint16 (scaled by 255/65535 as 16-bit grey is) or floats in 0..1."""
    if isinstance(a, Image.Image):
        return np.asarray(to_rgb(a))
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"not a picture: an array of shape {a.shape}")
    if a.dtype == np.uint16:
        a = np.clip(np.rint(a.astype(np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"not a picture: an array of {a.dtype} samples")
    if a.ndim == 3 and a.shape[2] == 3:
        return a
    return np.asarray(to_rgb(Image.fromarray(np.ascontiguousarray(a))))   # L, LA or RGBA
