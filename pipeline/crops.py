"""Source image -> RGB -> Resize(256, bicubic) -> CenterCrop(224), pixel-identical to torchvision.

``torchvision.transforms.Resize(256, InterpolationMode.BICUBIC)`` followed by
``CenterCrop(224)`` on a PIL image is what the paper (and ImageNet evaluation in general)
applies; the codecs then compress that 224² crop.  We call Pillow the same way torchvision
does instead of importing torchvision, so the CPU stage stays light; a test checks equality.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE = 256
CROP = 224

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


def resized_size(width: int, height: int, size: int = RESIZE) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to ``size``, with torchvision's rounding."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, crop: int = CROP) -> tuple[int, int, int, int]:
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def crop_image(img: Image.Image, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
    """PIL image (any mode) -> crop×crop×3 uint8 RGB array."""
    img = to_rgb(img)
    size = resized_size(*img.size, size=resize)
    if size != img.size:  # torchvision skips the resize when the size already matches
        img = img.resize(size, Image.BICUBIC)
    if min(img.size) < crop:
        raise ValueError(f"image of size {img.size} is smaller than the {crop}² crop after resizing")
    return np.asarray(img.crop(center_crop_box(*img.size, crop=crop)))


def load_crop(path, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
    """Open, fully decode (so truncated files fail here) and crop one image file."""
    with Image.open(path) as img:
        img.load()
        return crop_image(img, resize, crop)
