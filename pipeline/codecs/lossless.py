"""The reference setting: x̃ = x.

Its bitstream is the lossless WebP of the crop, which is also how shards store every clean
crop: measured on Imagenette crops, WebP lossless at method 0 is 27% smaller than PNG at
zlib level 1 (58 vs 80 KB) and about twice as fast to write (docs/format.md, "Layouts").
The manifest's bytes for this setting therefore tell what lossless transmission costs.
"""
from __future__ import annotations

import io

import numpy as np
import PIL
from PIL import Image, features

from .base import Codec, Option, pil_decode, pil_header, register
from .headers import Header, webp_header, webp_image_chunk


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@register
class LosslessCodec(Codec):
    name = "lossless"
    title = "lossless"
    order = 0
    ext = "webp"
    magics = ()
    q_range = None
    pil_formats = ("WEBP", "PNG")
    options_spec = {"method": Option(int, 0, "WebP lossless effort, 0 fast .. 6 smallest", range=(0, 6))}

    def encode(self, rgb: np.ndarray) -> bytes:
        return encode_lossless(rgb, self.options["method"])

    def decode(self, data: bytes, budget=None) -> np.ndarray:
        # a receiver may get lossless images as WebP or PNG; Pillow decodes both
        self.header(data, budget)
        return pil_decode(data, "lossless WebP/PNG", self.pil_formats, budget)

    @staticmethod
    def header_reader(data: bytes) -> Header:
        # a WebP's header read here (libwebp's animation decoder allocates its canvas at open);
        # a PNG's by Pillow's lazy open (size, and the frames of an APNG)
        if webp_image_chunk(data) is not None:
            return webp_header(data)
        return pil_header(data, "lossless", LosslessCodec.pil_formats)

    @classmethod
    def sniff(cls, data: bytes) -> bool:
        # PNG too: a receiver may get lossless images in either format; Pillow decodes both.
        # Lossy WebP (a VP8 picture) is the webp codec's.
        return webp_image_chunk(data) == b"VP8L" or data.startswith(PNG_MAGIC)

    @classmethod
    def versions(cls):
        return {"pillow": PIL.__version__, "libwebp": str(features.version("webp"))}


def encode_lossless(rgb: np.ndarray, method: int = 0) -> bytes:
    """Exact (bit-for-bit) WebP of an RGB array.

    In lossless mode WebP's ``quality`` is a second effort knob, not a fidelity one.  At
    method 0, quality 0 writes about 20% faster than quality 50 for files 0.2% larger
    (Imagenette crops), so the effort goes up with ``method`` only."""
    buf = io.BytesIO()
    quality = 0 if method == 0 else 50
    Image.fromarray(rgb).save(buf, "WEBP", lossless=True, method=method, quality=quality, exact=True)
    return buf.getvalue()
