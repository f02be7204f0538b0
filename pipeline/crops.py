"""Source image -> RGB -> Resize(256, bicubic) -> CenterCrop(224), pixel-identical to torchvision.

``torchvision.transforms.Resize(256, InterpolationMode.BICUBIC)`` followed by
``CenterCrop(224)`` on a PIL image is what the paper (and ImageNet evaluation in general)
applies; the codecs then compress that 224² crop.  We call Pillow the same way torchvision
does instead of importing torchvision, so the CPU stage stays light; tests check equality.

Memory is bounded whatever the input.  Source files are opened with an explicit list of
photo formats (:data:`SOURCE_FORMATS`: no EPS, so Ghostscript is never started) and their
header size is checked against the pixel budget (:mod:`pipeline.limits`) before any pixel
is decoded.  The resize is the other trap: a 3 KB JPEG of 10000×2 becomes 1,280,000×256
after Resize(256), 1 GB, of which the crop keeps 224².  When the resized image would exceed
the pixel budget, only the crop's region is resized (Pillow's ``resize(box=...)``).  That
path is not bit-identical to torchvision (Pillow computes the filter positions from the box
in floating point: a few levels apart on some pixels, see tests/test_crops.py), so it is
used only where torchvision's way would need more than the budget: never for a real photo
(at the default budget of 50 M pixels, aspect ratios beyond about 1:760).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .limits import DEFAULT_BUDGET, DecodeBudget, open_regular_file
from .pixels import to_rgb

RESIZE = 256
CROP = 224

#: formats a source image may be in (Pillow format names); everything else is refused
#: before a plugin parses it (JPEG includes multi-picture MPO files from cameras).  EPS is
#: not here on purpose: Pillow hands it to Ghostscript.
SOURCE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM", "JPEG2000")

def resized_size(width: int, height: int, size: int = RESIZE) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to ``size``, with torchvision's rounding."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, crop: int = CROP) -> tuple[int, int, int, int]:
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def crop_image(img: Image.Image, resize: int = RESIZE, crop: int = CROP,
               budget: DecodeBudget = DEFAULT_BUDGET) -> np.ndarray:
    """PIL image (any mode) -> crop×crop×3 uint8 RGB array; memory bounded by the pixel budget."""
    img = to_rgb(img)
    size = resized_size(*img.size, size=resize)
    if min(size) < crop:
        raise ValueError(f"image of size {img.size} is smaller than the {crop}² crop after resizing")
    if size[0] * size[1] > budget.max_pixels:
        return crop_region(img, resize, crop)
    if size != img.size:  # torchvision skips the resize when the size already matches
        img = img.resize(size, Image.BICUBIC)
    return np.asarray(img.crop(center_crop_box(*img.size, crop=crop)))


def crop_region(img: Image.Image, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
    """The same crop, resizing only its region of the source: memory ~ crop² whatever the
    aspect ratio, pixels within a few levels of :func:`crop_image` (not identical)."""
    w, h = img.size
    rw, rh = resized_size(w, h, size=resize)
    left, top, right, bottom = center_crop_box(rw, rh, crop=crop)
    sx, sy = w / rw, h / rh
    return np.asarray(img.resize((crop, crop), Image.BICUBIC, box=(left * sx, top * sy, right * sx, bottom * sy)))


def open_image(f, budget: DecodeBudget = DEFAULT_BUDGET) -> Image.Image:
    """Open a source image (header only, from an open file) in one of :data:`SOURCE_FORMATS`,
    within the pixel budget."""
    img = Image.open(f, formats=SOURCE_FORMATS)
    try:
        budget.check_pixels(*img.size, what=f"source image {img.format}")
    except BaseException:
        img.close()
        raise
    return img


def load_crop(path, resize: int = RESIZE, crop: int = CROP, budget: DecodeBudget = DEFAULT_BUDGET) -> np.ndarray:
    """Open, fully decode (so truncated files fail here) and crop one image file; a FIFO or a
    device in a source folder is refused, not waited on or read for ever."""
    with open_regular_file(path, "source image") as f, open_image(f, budget) as img:
        img.load()
        return crop_image(img, resize, crop, budget)
