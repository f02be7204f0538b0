"""Any Pillow image -> 8-bit RGB, one conversion for the BPG command's input and the pipeline's
crops (:mod:`pipeline.crops`), so that both see the same pixels."""
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
