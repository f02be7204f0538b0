"""What one input may cost: the decode budget every decoder in this project is handed, and
the bounded read of a file a user names.

Compressed files are small and what they announce is not: a 1.6 KB BPG file can announce
8192×8192 pixels, a 73-byte JPEG 2000 codestream 65,280 tiles of one pixel (630 MB of
decoder state), a 33 KB JPEG XL file 200 frames, a few KB of JPEG thousands of progressive
scans.  Every decoder reads these counts from the header first and refuses a bitstream
above its :class:`DecodeBudget` before allocating anything; geometry code checks what it is
about to create the same way.

The budget is a value: commands build one from ``--max-pixels`` (:func:`max_pixels_option`,
the one declaration every command uses) and hand it down; worker processes get it inside
their job.  ``M2M_MAX_PIXELS`` is read there too, as that option's default, and nowhere else.

It lives here, in the lowest layer, because the BPG command decodes and reads files too;
``pipeline.limits`` is the same module under the name the pipeline and the trainer use.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, fields, replace

DEFAULT_MAX_PIXELS = 50_000_000
ENV = "M2M_MAX_PIXELS"


class PixelBudgetError(ValueError):
    """A bitstream that costs more than the decode budget (the message names the count and the bound)."""


def _whole(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PixelBudgetError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class DecodeBudget:
    """The most one decode may cost, each bound read from the headers before decoding.

    - ``max_pixels``: width × height of one picture (every ImageNet image is far below 50 M;
      8192² is above).
    - ``max_tiles``: independently coded pieces of one picture (JPEG 2000 tiles, the items of
      a HEIF/AVIF grid): each costs its own decoder state (about 10 KB in OpenJPEG) whatever
      its size.  This project writes one; tiled photos of 50 M pixels in 256² tiles have 763.
    - ``max_frames``: pictures in one file (animations).  Decoders decode one picture, so a
      file that announces more is refused (a JPEG XL animation does not announce its count:
      its first shown frame may blend any number of frames, so it is refused whatever this is).
    - ``max_components``: colour and alpha planes of one picture (JPEG 2000 allows 16,384).
    - ``max_scans``: scans of a progressive JPEG, each a pass over every coefficient (libjpeg
      writes 10).
    """
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_tiles: int = 1024
    max_frames: int = 1
    max_components: int = 4
    max_scans: int = 128

    def __post_init__(self):
        for f in fields(self):
            _whole(f"the decode budget's {f.name}", getattr(self, f.name))

    def with_pixels(self, max_pixels: int) -> "DecodeBudget":
        return replace(self, max_pixels=max_pixels)

    def check_pixels(self, width: int, height: int, what: str = "picture") -> None:
        """Raise :class:`PixelBudgetError` unless 0 < width·height <= ``max_pixels``."""
        if width < 1 or height < 1:
            raise PixelBudgetError(f"{what}: invalid size {width}x{height}")
        if width * height > self.max_pixels:
            raise PixelBudgetError(f"{what}: {width}x{height} = {width * height:,} pixels is over the pixel budget "
                                   f"of {self.max_pixels:,} (raise it with --max-pixels)")

    def check(self, bound: str, count: int, what: str) -> None:
        """Raise :class:`PixelBudgetError` when ``count`` is above the bound ``max_<bound>``."""
        limit = getattr(self, f"max_{bound}")
        if count > limit:
            raise PixelBudgetError(f"{what}: {count:,} {bound} is over the decode budget of {limit:,} {bound}")


DEFAULT_BUDGET = DecodeBudget()


def check_pixels(width: int, height: int, what: str = "picture", budget: DecodeBudget | None = None) -> None:
    """:meth:`DecodeBudget.check_pixels` of ``budget`` (None: the default budget)."""
    (budget or DEFAULT_BUDGET).check_pixels(width, height, what)


def max_pixels_option(f=None, *, default: int | None = None):
    """``--max-pixels`` as every command declares it: the click parameter ``budget`` is a
    :class:`DecodeBudget`.  Unset, it is ``$M2M_MAX_PIXELS`` when set, else ``default`` (a
    command's own, e.g. a server's), else 50 M."""
    import click

    def to_budget(ctx, param, value):
        return DecodeBudget(max_pixels=value or default or DEFAULT_MAX_PIXELS)

    option = click.option(
        "--max-pixels", "budget", type=click.IntRange(min=1), default=None, envvar=ENV, show_envvar=True,
        callback=to_budget,
        help=f"Largest picture a decoder accepts, width x height read from its header before decoding "
             f"[default: {default or DEFAULT_MAX_PIXELS:,}].")
    return option if f is None else option(f)


# --------------------------------------------------------------------------- files users name

class FileKindError(OSError):
    """A path that is not a regular file (a FIFO, a device, a socket, a folder): refused
    without blocking on it, with a message naming it."""


def open_regular(path, what: str = "file") -> int:
    """A read-only descriptor of ``path``, which must be a regular file.  Opened with
    O_NONBLOCK (a FIFO never waits for a writer) and checked with fstat on what was opened (no
    race with a rename); a FIFO, a device (/dev/zero would be read for ever) or a folder is a
    :class:`FileKindError`.  A path with a NUL byte is one too, not a ValueError."""
    if "\0" in os.fsdecode(path):
        raise FileKindError(f"{os.fsdecode(path)!r}: a path with a NUL byte; refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise FileKindError(f"{path}: is a folder, not a {what}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FileKindError(f"{path}: is a folder, not a {what}")
        if not stat.S_ISREG(mode):
            raise FileKindError(f"{path}: not a regular file (a pipe, socket or device); refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path, what: str = "file") -> None:
    """:func:`open_regular`, closed again: for readers that take a path (a memory map)."""
    os.close(open_regular(path, what))


def open_regular_file(path, what: str = "file", buffering: int = -1):
    """:func:`open_regular` as a binary file object (for readers that stream: hashing, tar, torch.load)."""
    return os.fdopen(open_regular(path, what), "rb", buffering=buffering)


def read_regular(path, what: str = "file", max_bytes: int = 64 << 20) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (:func:`open_regular`); a larger
    one is a :class:`FileKindError` naming the limit, refused before it is read."""
    with open_regular_file(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise FileKindError(f"{path}: {size:,} bytes is over the {max_bytes:,}-byte limit of a {what}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:   # grew while being read
        raise FileKindError(f"{path}: over the {max_bytes:,}-byte limit of a {what}")
    return data
