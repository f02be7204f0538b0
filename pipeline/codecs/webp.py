"""Lossy WebP (VP8) through Pillow/libwebp: always 4:2:0, the format has no other sampling.

``method`` is libwebp's effort (0 fast .. 6 smallest); 6 by default because a 224² crop
takes about 10 ms at 6.  libwebp's lossy encoder is single-threaded in Pillow and
deterministic (a test encodes twice and compares).  Lossless WebP is the ``lossless``
setting's format; content sniffing tells the two apart by the picture's chunk (``VP8 ``
here, ``VP8L`` there).
"""
from __future__ import annotations

import io

import numpy as np
import PIL
from PIL import Image, features

from .base import Codec, CodecError, Option, pil_decode, register
from .headers import webp_header, webp_image_chunk


@register
class WebpCodec(Codec):
    name = "webp"
    title = "WebP"
    order = 4
    header_reader = staticmethod(webp_header)
    ext = "webp"
    q_range = (0, 100)
    q_meaning = "WebP quality"
    default_q = 75
    options_spec = {
        "method": Option(int, 6, "libwebp effort, 0 fast .. 6 smallest", range=(0, 6)),
    }

    def __init__(self, q=None, **options):
        super().__init__(q, **options)
        if not features.check("webp"):
            raise CodecError(f"codec 'webp': this Pillow ({PIL.__version__}) was built without WebP support")

    def encode(self, rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "WEBP", quality=self.q, method=self.options["method"], lossless=False)
        return buf.getvalue()

    def decode(self, data: bytes, budget=None) -> np.ndarray:
        self.header(data, budget)
        return pil_decode(data, "WebP", ["WEBP"], budget)

    def params(self):
        return {**super().params(), "lossless": False, "subsampling": "4:2:0"}

    @classmethod
    def sniff(cls, data: bytes) -> bool:
        chunk = webp_image_chunk(data)
        return chunk is not None and chunk != b"VP8L"

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"pillow": PIL.__version__, "libwebp": str(features.version("webp"))}
