"""AVIF (AV1 intra) through Pillow/libavif: libaom encodes, dav1d decodes.

``speed`` is libavif's (0 slowest/smallest .. 10 fastest); 6 by default, Pillow's and
libavif's own, about 40 ms a 224² crop.  Chroma 4:2:0 by default, like the paper's JPEG
and BPG settings; full-range YUV (Pillow's default).  The encoder runs on one thread:
libaom's multi-threaded tiling and row-MT are not promised to give the same bytes, and
shards must be byte-identical between runs.  The decoder reads the picture size from the
``ispe`` properties and its items first (:func:`pipeline.codecs.headers.heif_header`).
"""
from __future__ import annotations

import io

import numpy as np
import PIL
from PIL import Image, features

from .base import Codec, CodecError, Option, pil_decode, register
from .headers import ftyp_brands, heif_header

ENCODER = "aom"
#: ftyp brands of AV1 image files: a still image, an image sequence
BRANDS = (b"avif", b"avis")


def _avif_module():
    """Pillow's libavif binding, or a CodecError saying what is missing."""
    if not features.check("avif"):
        raise CodecError(f"codec 'avif': this Pillow ({PIL.__version__}) was built without AVIF support "
                         "(PIL.features.check('avif') is False); install a Pillow wheel with libavif")
    from PIL import _avif
    return _avif


@register
class AvifCodec(Codec):
    name = "avif"
    title = "AVIF"
    order = 5
    header_reader = staticmethod(heif_header)
    ext = "avif"
    q_range = (0, 100)
    q_meaning = "AVIF quality (libavif's 0..100, mapped to the AV1 quantizer)"
    default_q = 50
    options_spec = {
        "speed": Option(int, 6, "libavif speed, 0 slowest/smallest .. 10 fastest", range=(0, 10)),
        "subsampling": Option(str, "4:2:0", "chroma subsampling", choices=("4:2:0", "4:2:2", "4:4:4")),
    }

    def __init__(self, q=None, **options):
        super().__init__(q, **options)
        self._avif = _avif_module()

    def encode(self, rgb: np.ndarray) -> bytes:
        if not self._avif.encoder_codec_available(ENCODER):
            raise CodecError(f"codec 'avif': Pillow's libavif has no {ENCODER} encoder")
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "AVIF", quality=self.q, speed=self.options["speed"],
                                  subsampling=self.options["subsampling"], codec=ENCODER, max_threads=1,
                                  range="full", autotiling=False)
        return buf.getvalue()

    def decode(self, data: bytes, budget=None) -> np.ndarray:
        self.header(data, budget)
        return pil_decode(data, "AVIF", ["AVIF"], budget)

    def params(self):
        return {**super().params(), "encoder": ENCODER, "range": "full", "threads": 1}

    @classmethod
    def sniff(cls, data: bytes) -> bool:
        return bool(ftyp_brands(data) & set(BRANDS))

    @classmethod
    def versions(cls) -> dict[str, str]:
        out = {"pillow": PIL.__version__, "libavif": str(features.version("avif"))}
        try:
            out["av1_codecs"] = _avif_module().codec_versions()
        except CodecError as exc:
            out["av1_codecs"] = f"unavailable: {exc}"
        return out
