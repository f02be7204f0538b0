"""JPEG through Pillow/libjpeg: 4:2:0, optimize off — the paper's setting."""
from __future__ import annotations

import io

import numpy as np
import PIL
from PIL import Image, features

from .base import Codec, Option, pil_decode, register


@register
class JpegCodec(Codec):
    name = "jpeg"
    ext = "jpg"
    magics = (b"\xff\xd8\xff",)
    q_range = (1, 100)
    q_meaning = "JPEG quality"
    default_q = 75
    options_spec = {
        "subsampling": Option(str, "4:2:0", "chroma subsampling", choices=("4:4:4", "4:2:2", "4:2:0")),
        "optimize": Option(bool, False, "optimised Huffman tables (smaller files, same pixels)"),
    }

    def encode(self, rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=self.q, subsampling=self.options["subsampling"],
                                  optimize=self.options["optimize"])
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        return pil_decode(data, "JPEG", ["JPEG"])

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"pillow": PIL.__version__, "libjpeg": str(features.version("jpg"))}

