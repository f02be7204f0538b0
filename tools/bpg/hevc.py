"""HEVC through PyAV: x265 (libx265) for encoding one intra picture, FFmpeg's hevc decoder
for decoding it.  Planes go in and come out as NumPy arrays: no colour conversion happens
inside FFmpeg.
"""
from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

import numpy as np

from .header import BpgError

# bpgenc's -m level indexes this list (so -m 9 is placebo and ultrafast is never used)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
           "veryslow", "placebo")

PIX_FMT = {0: "gray", 1: "yuv420p", 3: "yuv444p"}  # by chroma_format_idc


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("tools.bpg needs PyAV (pip install av), whose wheels bundle FFmpeg "
                          "with libx265 and the hevc decoder") from exc
    return av


def check_available() -> None:
    """Raise a clear error when PyAV or its libx265 encoder is missing."""
    av = _av()
    if "libx265" not in av.codecs_available:
        raise ImportError("this PyAV build has no libx265 encoder; install the PyPI 'av' wheel, "
                          "which bundles it")


def x265_params(q: int, effort: int, info: bool = False, min_side: int = 64) -> str:
    params = {
        "qp": q,                 # constant QP (CQP); x265 codes the I slice at qp - 3 (ipratio)
        "aq-mode": 0,            # bpgenc: AQ off
        "keyint": 1,
        "min-keyint": 1,
        "amp": 1,                # the BPG header fixes amp_enabled_flag = 1
        "rect": 1,
        "repeat-headers": 1,     # VPS/SPS/PPS in the picture's packet
        "info": int(info),       # no version SEI in the file
        "hash": 0,
        "frame-threads": 1,
        # one worker thread: x265 turns WPP off without a thread pool, and bpgenc's streams
        # have WPP on (entropy_coding_sync_enabled_flag in the PPS)
        "pools": 1,
        "log-level": "error",
    }
    if min_side < 64:
        # x265 shrinks the CTU to fit small pictures but then rejects the slow presets'
        # transform depth; pick both explicitly (the header records whatever the SPS says)
        ctu = 32 if min_side >= 32 else 16
        depth = 4 if ctu == 32 else 3
        params.update({"ctu": ctu, "tu-intra-depth": depth, "tu-inter-depth": depth})
    return ":".join(f"{k}={v}" for k, v in params.items())


def _fill_frame(frame, planes: list[np.ndarray]) -> None:
    for plane, data in zip(frame.planes, planes):
        h, w = data.shape
        buf = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
        buf[:h, :w] = data


def encode_planes(planes: list[np.ndarray], chroma_format_idc: int, q: int, effort: int,
                  info: bool = False) -> bytes:
    """Encode padded 8-bit planes (Y[, Cb, Cr]) as one IDR picture; returns Annex-B bytes."""
    av = _av()
    height, width = planes[0].shape
    if min(height, width) < 16:
        raise ValueError(f"x265 cannot encode a {width}x{height} picture: BPG over x265 needs "
                         f"images of at least 9x9 pixels (coded size padded to 16x16)")
    ctx = av.CodecContext.create("libx265", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = PIX_FMT[chroma_format_idc]
    ctx.time_base = Fraction(1, 25)
    ctx.gop_size = 1
    ctx.options = {"preset": PRESETS[effort], "tune": "ssim", "x265-params": x265_params(q, effort, info, min(height, width))}
    frame = av.VideoFrame(width, height, PIX_FMT[chroma_format_idc])
    _fill_frame(frame, planes)
    frame.pts = 0
    out = [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return b"".join(out)


def decode_annexb(stream: bytes) -> list[np.ndarray]:
    """Decode an Annex-B stream holding one picture; returns its planes (uint8, uncropped)."""
    av = _av()
    try:
        ctx = av.CodecContext.create("hevc", "r")
        ctx.thread_count = 1
        frames = list(ctx.decode(av.Packet(stream)))
        frames += list(ctx.decode(None))
    except av.FFmpegError as exc:
        raise BpgError(f"undecodable BPG picture data: FFmpeg's hevc decoder says {exc}") from exc
    if not frames:
        raise BpgError("undecodable BPG picture data: the hevc decoder produced no picture")
    frame = frames[0]
    if frame.format.name not in PIX_FMT.values():
        raise BpgError(f"undecodable BPG picture data: decoder output is {frame.format.name}")
    out = []
    for plane in frame.planes:
        buf = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
        out.append(buf[:plane.height, :plane.width])
    return out


@lru_cache(maxsize=1)
def x265_version() -> str:
    """x265's version, read from the info SEI of a tiny test encode (PyAV does not expose it)."""
    try:
        stream = encode_planes([np.zeros((16, 16), np.uint8)], 0, 30, 1, info=True)
    except Exception as exc:  # pragma: no cover - only when the encoder is broken
        return f"unknown ({exc})"
    m = re.search(rb"x265 \(build \d+\) - ([^:\s]+)", stream)
    return m.group(1).decode("ascii", "replace") if m else "unknown"


def library_versions() -> dict[str, str]:
    av = _av()
    libs = av.library_versions
    return {
        "x265": x265_version(),
        "ffmpeg": str(getattr(av, "ffmpeg_version_info", "unknown")),
        "libavcodec": ".".join(map(str, libs.get("libavcodec", ()))),
        "pyav": av.__version__,
    }
