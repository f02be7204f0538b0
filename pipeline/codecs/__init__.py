"""Codecs by name: ``create("jpeg", 10)``, ``decode_any(bytes)``; ``wds_handler`` for
webdataset readers of the shards.

Importing this package registers every codec module.  Libraries behind a codec (PyAV for
BPG, glymur for J2K encoding, imagecodecs for JPEG XL) are imported only when they are
used, so a missing one fails with a clear message then, not here.
"""
from .base import (Codec, CodecError, Option, PictureTooLargeError, Probe, available, create, decode_any,
                   decode_as, detect, get, in_order, probe, register)
from . import avif, bpg, jpeg, j2k, jxl, lossless, webp  # noqa: F401  (registration)
from .wds import wds_handler, wds_handler_for

__all__ = ["Codec", "CodecError", "Option", "PictureTooLargeError", "Probe", "available", "create", "decode_any",
           "decode_as", "detect", "get", "in_order", "probe", "register", "wds_handler", "wds_handler_for"]
