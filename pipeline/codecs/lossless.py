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

from .base import Codec, Option, Probe, pil_decode, register
from .headers import webp_image_chunk, webp_size


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

    def decode(self, data: bytes) -> np.ndarray:
        # a receiver may get lossless images as WebP or PNG; Pillow decodes both
        if webp_image_chunk(data) is not None:
            self.check_header(data, webp_size, "lossless WebP")
        return pil_decode(data, "lossless WebP/PNG", self.pil_formats)

    @classmethod
    def probe(cls, data: bytes):
        # a WebP's size from its header (libwebp would decode at open); a PNG's from Pillow's lazy open
        if webp_image_chunk(data) is not None:
            cls.check_header(data, webp_size, "lossless WebP")
            return Probe(cls.name, *webp_size(data), len(data))
        return super().probe(data)

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
