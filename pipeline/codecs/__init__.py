"""Codecs by name: ``create("jpeg", 10)``, ``decode_any(bytes)``.

Importing this package registers every codec module; a codec whose library is missing
still registers and fails with a clear message when it is used.
"""
from .base import Codec, CodecError, available, create, decode_any, detect, get, register
from . import jpeg, j2k, lossless  # noqa: F401  (registration)

try:  # BPG lives in tools/bpg; the adapter imports it lazily
    from . import bpg  # noqa: F401
except ImportError:  # pragma: no cover - only while tools/bpg is being written
    pass

__all__ = ["Codec", "CodecError", "available", "create", "decode_any", "detect", "get", "register"]
