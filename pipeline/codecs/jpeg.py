"""JPEG through Pillow/libjpeg: 4:2:0, optimize off — the paper's setting."""
from __future__ import annotations

import io

import numpy as np
import PIL
from PIL import Image, features

from .base import Codec, CodecError, register


@register
class JpegCodec(Codec):
    name = "jpeg"
    ext = "jpg"
    magics = (b"\xff\xd8\xff",)
    q_range = (1, 100)
    q_meaning = "JPEG quality"
    default_q = 75
    options_spec = {
        "subsampling": (str, "4:2:0", "chroma subsampling: 4:4:4, 4:2:2 or 4:2:0"),
        "optimize": (bool, False, "optimised Huffman tables (smaller files, same pixels)"),
    }
    option_choices = {"subsampling": ("4:4:4", "4:2:2", "4:2:0")}

    def encode(self, rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=self.q, subsampling=self.options["subsampling"],
                                  optimize=self.options["optimize"])
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        return _pil_decode(data, "JPEG")

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"pillow": PIL.__version__, "libjpeg": str(features.version("jpg"))}


def _pil_decode(data: bytes, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise CodecError(f"undecodable {what} data ({len(data)} bytes): {exc}") from exc
