"""BPG through tools/bpg (x265 + FFmpeg's hevc decoder via PyAV), bpgenc 0.9.8 settings.

The paper's setting is ``-m 9 -f 420`` with q in 41/46/51.  PyAV is imported only when an
instance is created, so listing codecs works without it.

``-o encoder=bpgenc`` encodes with the genuine reference encoder instead (found on PATH, or
``-o bpgenc=/path/to/bpgenc``), for users who have it; its version goes into the manifest.
Decoding always uses tools/bpg, which reproduces bpgdec's pixels exactly (tests check all
29 genuine vectors).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec, CodecError, Option, register
from .headers import Header


@register
class BpgCodec(Codec):
    name = "bpg"
    title = "BPG"
    order = 3
    ext = "bpg"
    magics = (b"BPG\xfb",)
    q_range = (0, 51)
    q_integer = True
    q_meaning = "BPG quantizer (bpgenc -q, lower is better)"
    default_q = 41
    options_spec = {
        "effort": Option(int, 9, "bpgenc -m level (x265 preset index; 9 = placebo, the paper's)",
                         range=(1, 9)),
        "chroma": Option(str, "420", "chroma format", choices=("420", "444", "gray")),
        "encoder": Option(str, "x265", "x265 = our in-process encoder; bpgenc = the genuine "
                          "reference encoder (on PATH or -o bpgenc=PATH)", choices=("x265", "bpgenc")),
        "bpgenc": Option(str, "", "path of the genuine bpgenc (implies encoder=bpgenc)", in_params=False),
    }

    def __init__(self, q: float | None = None, **options: Any):
        if options.get("bpgenc") and "encoder" not in options:
            options["encoder"] = "bpgenc"
        super().__init__(q, **options)
        self._bpgenc = None
        try:
            if self.options["encoder"] == "bpgenc":
                from tools.bpg.reference import find_tool, tool_version
                self._bpgenc = find_tool("bpgenc", self.options["bpgenc"] or None)
                tool_version(self._bpgenc)          # fails now, not on the first image
            else:
                from tools.bpg import hevc
                hevc.check_available()
        except ImportError as exc:
            raise CodecError(f"codec 'bpg' is unavailable: {exc}") from exc
        except ValueError as exc:       # BpgError: the reference tool is missing or broken
            raise CodecError(f"codec 'bpg': {exc}") from None

    def encode(self, rgb: np.ndarray) -> bytes:
        q, effort, chroma = self.q, self.options["effort"], self.options["chroma"]
        if self._bpgenc:
            from tools.bpg.reference import bpgenc_encode
            return bpgenc_encode(rgb, q, effort, chroma, self._bpgenc)
        from tools.bpg import encode
        return encode(rgb, q=q, effort=effort, chroma=chroma)

    @staticmethod
    def header_reader(data: bytes) -> Header:
        """The BPG header's size; its picture data checked to hold one picture and no parameter
        sets of its own (:func:`tools.bpg.read_qp` reads them), so that the header's size is
        the size decoded."""
        from tools.bpg import read_header, read_qp
        h = read_header(data)
        read_qp(data)
        return Header(h.picture_width, h.picture_height)

    @classmethod
    def quality(cls, data: bytes):
        from tools.bpg import BpgError, read_q
        try:
            return read_q(data), "slice QP"
        except BpgError as exc:
            raise CodecError(f"unreadable BPG header ({len(data)} bytes): {exc}") from None

    def decode(self, data: bytes, budget=None) -> np.ndarray:
        from tools.bpg import BpgError, decode, read_header
        try:
            h = read_header(data)
        except BpgError as exc:
            raise CodecError(f"undecodable BPG data ({len(data)} bytes): {exc}") from exc
        self.check_budget(Header(h.picture_width, h.picture_height), budget)
        try:
            return decode(data, budget)
        except BpgError as exc:
            raise CodecError(f"undecodable BPG data ({len(data)} bytes): {exc}") from exc

    def params(self) -> dict[str, Any]:
        out = {**super().params(), "bit_depth": 8, "color_space": "ycbcr"}
        if not self._bpgenc:
            from tools.bpg import hevc
            if hevc.TUNING:   # x265 options on top of bpgenc's (tools/bpg/README.md)
                out["x265_tuning"] = ":".join(f"{k}={v}" for k, v in hevc.TUNING.items())
        return out

    def versions(self) -> dict[str, str]:
        try:
            from tools.bpg import versions
            out = versions()
        except ImportError as exc:
            out = {"error": str(exc)}
        if self._bpgenc:
            from tools.bpg.reference import tool_version
            v = tool_version(self._bpgenc)
            out.update({"bpgenc": v["version"], "bpgenc_sha256": v["sha256"]})
        return out
