"""BPG through tools/bpg (x265 + FFmpeg's hevc decoder via PyAV), bpgenc 0.9.8 settings.

The paper's setting is ``-m 9 -f 420`` with q in 41/46/51.  PyAV is imported only when an
instance is created, so listing codecs works without it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec, CodecError, register


@register
class BpgCodec(Codec):
    name = "bpg"
    ext = "bpg"
    magics = (b"BPG\xfb",)
    q_range = (0, 51)
    q_integer = True
    q_meaning = "BPG quantizer (bpgenc -q, lower is better)"
    default_q = 41
    options_spec = {
        "effort": (int, 9, "bpgenc -m level 1..9 (x265 preset index; 9 = placebo, the paper's)"),
        "chroma": (str, "420", "chroma format: 420, 444 or gray"),
    }
    option_choices = {"chroma": ("420", "444", "gray")}

    def __init__(self, q: float | None = None, **options: Any):
        super().__init__(q, **options)
        effort = self.options["effort"]
        if not 1 <= effort <= 9:
            raise CodecError(f"codec 'bpg': option effort={effort} is outside 1..9")
        try:
            from tools.bpg import hevc
            hevc.check_available()
        except ImportError as exc:
            raise CodecError(f"codec 'bpg' is unavailable: {exc}") from exc

    def encode(self, rgb: np.ndarray) -> bytes:
        from tools.bpg import encode
        return encode(rgb, q=self.q, effort=self.options["effort"], chroma=self.options["chroma"])

    def decode(self, data: bytes) -> np.ndarray:
        from tools.bpg import BpgError, decode
        try:
            return decode(data)
        except BpgError as exc:
            raise CodecError(f"undecodable BPG data ({len(data)} bytes): {exc}") from exc

    def params(self) -> dict[str, Any]:
        return {"q": self.q, **self.options, "bit_depth": 8, "color_space": "ycbcr"}

    @classmethod
    def versions(cls) -> dict[str, str]:
        try:
            from tools.bpg import versions
            return versions()
        except ImportError as exc:
            return {"error": str(exc)}
