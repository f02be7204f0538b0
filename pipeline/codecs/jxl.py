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

from .base import Codec, CodecError, Option, register
from .headers import JXL_CODESTREAM, JXL_CONTAINER, jxl_size

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
    header_size = staticmethod(jxl_size)
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

    def decode(self, data: bytes) -> np.ndarray:
        self.check_header(data, jxl_size, "JPEG XL")
        try:
            out = self._ic.jpegxl_decode(data, numthreads=1)
        except Exception as exc:  # noqa: BLE001 - hostile data must end in CodecError, whatever broke
            raise CodecError(f"undecodable JPEG XL data ({len(data)} bytes): {exc}") from exc
        if out.dtype != np.uint8:
            raise CodecError(f"JPEG XL picture of {out.dtype} samples: only 8-bit pictures are decoded")
        if out.ndim == 2:
            out = np.repeat(out[:, :, None], 3, axis=2)
        elif out.shape[2] == 2:                  # grey + alpha
            out = np.repeat(out[:, :, :1], 3, axis=2)
        elif out.shape[2] > 3:                   # alpha dropped, as Pillow's convert("RGB") does
            out = np.ascontiguousarray(out[:, :, :3])
        return out

    def params(self):
        return {**super().params(), "lossless": False, "container": False, "threads": 1}

    @classmethod
    def versions(cls) -> dict[str, str]:
        try:
            ic = _imagecodecs()
        except CodecError as exc:
            return {"imagecodecs": f"unavailable: {exc}"}
        return {"imagecodecs": ic.__version__, "libjxl": ic.jpegxl_version().replace("libjxl ", "")}
