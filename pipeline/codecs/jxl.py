"""JPEG XL through imagecodecs/libjxl (optional: ``pip install 'm2m-expert[jxl]'``).

``q`` is libjxl's quality, as ``cjxl -q``: libjxl maps it to a Butteraugli distance
(``JxlEncoderDistanceFromQuality``; q 90 is distance 1).  VarDCT in XYB, which has no
chroma subsampling; ``effort`` is libjxl's (1 fastest .. 9), 7 by default, libjxl's own.
The file is the bare codestream (``FF 0A``, no container boxes), one thread for encoding
and decoding.

Pixels: libjxl decodes in floating point, and releases do not round alike (0.7 and 0.12
differ from 0.11 by one level in about a quarter of the samples), so the manifest records
the libjxl version, and the tests check the decode against another binding of the same
release (pillow-jxl-plugin).
"""
from __future__ import annotations

import numpy as np

from ..pixels import to_rgb_array
from .base import Codec, CodecError, Option, register
from .headers import JXL_CODESTREAM, JXL_CONTAINER, jxl_header

EXTRA = "jxl"


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:
        raise CodecError(f"codec 'jxl' needs imagecodecs: pip install 'm2m-expert[{EXTRA}]'") from None
    if not getattr(imagecodecs.JPEGXL, "available", False):
        raise CodecError(f"codec 'jxl': this imagecodecs ({imagecodecs.__version__}) was built without libjxl")
    return imagecodecs


@register
class JxlCodec(Codec):
    name = "jxl"
    title = "JPEG XL"
    order = 6
    #: size, extra channels, and animation (refused: no header gives its frame count)
    header_reader = staticmethod(jxl_header)
    ext = "jxl"
    magics = (JXL_CODESTREAM, JXL_CONTAINER)
    q_range = (0, 99)     # libjxl's 100 is lossless: the lossless setting's job
    q_meaning = "JPEG XL quality (cjxl -q)"
    default_q = 50
    options_spec = {
        "effort": Option(int, 7, "libjxl effort, 1 fastest .. 9 smallest", range=(1, 9)),
    }

    def __init__(self, q=None, **options):
        super().__init__(q, **options)
        self._ic = _imagecodecs()

    def encode(self, rgb: np.ndarray) -> bytes:
        return bytes(self._ic.jpegxl_encode(np.ascontiguousarray(rgb), level=self.q, effort=self.options["effort"],
                                            lossless=False, usecontainer=False, numthreads=1))

    def decode(self, data: bytes, budget=None) -> np.ndarray:
        self.header(data, budget)
        try:
            # index=0: the first frame only (without it, imagecodecs decodes every frame)
            out = self._ic.jpegxl_decode(data, 0, numthreads=1)
        except Exception as exc:  # noqa: BLE001 - hostile data must end in CodecError, whatever broke
            raise CodecError(f"undecodable JPEG XL data ({len(data)} bytes): {exc}") from exc
        try:
            return to_rgb_array(out)        # grey, alpha over white, 16-bit scaled: the pipeline's way
        except ValueError as exc:
            raise CodecError(f"undecodable JPEG XL data ({len(data)} bytes): {exc}") from None

    def params(self):
        return {**super().params(), "lossless": False, "container": False, "threads": 1}

    @classmethod
    def versions(cls) -> dict[str, str]:
        try:
            ic = _imagecodecs()
        except CodecError as exc:
            return {"imagecodecs": f"unavailable: {exc}"}
        return {"imagecodecs": ic.__version__, "libjxl": ic.jpegxl_version().replace("libjxl ", "")}
