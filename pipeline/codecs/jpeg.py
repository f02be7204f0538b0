"""JPEG through Pillow/libjpeg: 4:2:0, optimize off — the paper's setting."""
from __future__ import annotations

import io

import numpy as np
import PIL
from PIL import Image, features

from .base import Codec, Option, pil_decode, register
from .headers import jpeg_header


@register
class JpegCodec(Codec):
    name = "jpeg"
    title = "JPEG"
    order = 1
    ext = "jpg"
    magics = (b"\xff\xd8\xff",)
    q_range = (1, 100)
    q_meaning = "JPEG quality"
    default_q = 75
    pil_formats = ("JPEG",)
    #: size, components and scans: a few KB of progressive scans each cost a pass over the picture
    header_reader = staticmethod(jpeg_header)
    options_spec = {
        "subsampling": Option(str, "4:2:0", "chroma subsampling", choices=("4:4:4", "4:2:2", "4:2:0")),
        "optimize": Option(bool, False, "optimised Huffman tables (smaller files, same pixels)"),
    }

    def encode(self, rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=self.q, subsampling=self.options["subsampling"],
                                  optimize=self.options["optimize"])
        return buf.getvalue()

    def decode(self, data: bytes, budget=None) -> np.ndarray:
        self.header(data, budget)
        return pil_decode(data, "JPEG", self.pil_formats, budget)

    @classmethod
    def quality(cls, data: bytes) -> tuple[int | None, str | None]:
        try:
            with Image.open(io.BytesIO(data), formats=list(cls.pil_formats)) as img:
                tables = getattr(img, "quantization", None) or {}
        except Exception:  # noqa: BLE001 - the header was read already: no tables, no quality
            return None, None
        q = ijg_quality(tables)
        return (q, "quantisation tables") if q is not None else (None, None)

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"pillow": PIL.__version__, "libjpeg": str(features.version("jpg"))}



# libjpeg's standard tables (ITU-T T.81 Annex K), natural order, as Pillow reports them
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_STD_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32)


def ijg_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg's ``jpeg_set_quality`` (baseline): the luminance and chrominance tables of a quality."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(np.clip((t * scale + 50) // 100, 1, 255) for t in (_STD_LUMA, _STD_CHROMA))


_IJG = {q: ijg_tables(q) for q in range(1, 101)}


def ijg_quality(tables: dict) -> int | None:
    """The IJG quality (1..100) whose scaled standard tables are nearest to a JPEG's (exact for
    libjpeg's and Pillow's files; the nearest in log ratio for other encoders), or None when
    the file has no 64-entry luminance table."""
    luma = tables.get(0)
    if luma is None or len(luma) != 64:
        return None
    got = [np.log(np.maximum(np.asarray(luma, dtype=np.float64), 1))]
    chroma = tables.get(1)
    if chroma is not None and len(chroma) == 64:
        got.append(np.log(np.maximum(np.asarray(chroma, dtype=np.float64), 1)))

    def distance(q: int) -> float:
        return sum(float(np.abs(g - np.log(t)).sum()) for g, t in zip(got, _IJG[q]))
    # ties (q 1 and 2 both clip to 255 everywhere) go to the higher quality
    return min(range(100, 0, -1), key=distance)
