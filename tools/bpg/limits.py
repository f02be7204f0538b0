"""The pixel budget: the largest picture any decoder in this project will decode.

Compressed files are small and pictures are not: a 1.6 KB BPG file can announce 8192×8192
pixels, a 3 KB JPEG 10000×2 (which a shorter-side resize to 256 turns into 1.3 G pixels).
Every decoder reads the size from the header first and refuses a picture above the budget
before allocating anything; geometry code checks what it is about to create the same way.

Default: 50 M pixels (every ImageNet image is far below; 8192² is above).  Change it with
``--max-pixels`` on the commands that decode, ``M2M_MAX_PIXELS`` in the environment (read by
worker processes too), or :func:`set_max_pixels` in Python.

It lives here, in the lowest layer, because the BPG command checks it too;
``pipeline.limits`` is the same module under the name the pipeline and the trainer use.
"""
from __future__ import annotations

import os

DEFAULT_MAX_PIXELS = 50_000_000
ENV = "M2M_MAX_PIXELS"


class PixelBudgetError(ValueError):
    """A picture larger than the pixel budget (the message names the size and the budget)."""


def max_pixels() -> int:
    """The budget in force: ``M2M_MAX_PIXELS`` when set (and valid), else the default."""
    text = os.environ.get(ENV)
    if text:
        try:
            value = int(text)
        except ValueError:
            raise PixelBudgetError(f"{ENV}={text!r} is not a whole number of pixels") from None
        if value < 1:
            raise PixelBudgetError(f"{ENV}={text!r} must be at least 1")
        return value
    return DEFAULT_MAX_PIXELS


def set_max_pixels(value: int | None) -> None:
    """Set the budget for this process and the worker processes it starts (None: default)."""
    if value is None:
        os.environ.pop(ENV, None)
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PixelBudgetError(f"the pixel budget must be a whole number >= 1, got {value!r}")
    os.environ[ENV] = str(value)


def check_pixels(width: int, height: int, what: str = "picture") -> None:
    """Raise :class:`PixelBudgetError` unless 0 < width·height <= the budget."""
    budget = max_pixels()
    if width < 1 or height < 1:
        raise PixelBudgetError(f"{what}: invalid size {width}x{height}")
    if width * height > budget:
        raise PixelBudgetError(f"{what}: {width}x{height} = {width * height:,} pixels is over the pixel budget "
                               f"of {budget:,} (raise it with --max-pixels or {ENV})")
