"""HEVC through PyAV: x265 (libx265) for encoding intra pictures, FFmpeg's hevc decoder for
decoding them.  Planes go in and come out as NumPy arrays: no colour conversion happens
inside FFmpeg.

Encoder re-use: opening x265 and coding its first picture costs set-up that every later
picture of the same size and settings can skip, so each thread keeps a few open encoders
(least recently used first out) and feeds them consecutive pictures, each an independent
IDR picture (``keyint=1``).  The output is byte-identical to a fresh encoder's: x265 writes
the same NAL units except one slice-header flag, ``slice_loop_filter_across_slices_enabled_flag``,
which it takes from a constant's bit at position ``POC % 31``.  With one slice per picture the
flag has no effect on decoding (there is no slice boundary to filter across); we set it to
the value of the encoder's first picture (POC 0), which is what a fresh encoder writes.
A picture whose output does not come out as expected is re-done on a fresh encoder, and the
cached one is dropped.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import re
import threading
import weakref
from collections import OrderedDict
from fractions import Fraction
from functools import lru_cache

import numpy as np

from .errors import BpgError
from .paramsets import (NAL_PPS, NAL_SPS, nal_type, parse_pps, parse_sps, set_bit,
                        slice_lfas_flag_position, split_annexb)

# bpgenc's -m level indexes this list (so -m 9 is placebo and ultrafast is never used)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
           "veryslow", "placebo")

PIX_FMT = {0: "gray", 1: "yuv420p", 3: "yuv444p"}  # by chroma_format_idc

#: x265 options on top of bpgenc's, found by benchmarks/bpg_tune.py on half of the genuine
#: reference encodes and kept because they also bring the held-out half closer in bytes and
#: PSNR (tools/bpg/README.md, "Closer to the genuine encoder?"): x265 4.2 spends more on
#: chroma than the x265 1.8 inside bpgenc 0.9.8 at the same QP, and chroma QP offsets of +2
#: (in the PPS) bring the chroma planes near the reference while luma is unchanged
TUNING: dict[str, object] = {"cbqpoffs": 2, "crqpoffs": 2}

#: encoders kept open per thread, and the most pixels they may hold together
MAX_ENCODERS = 4
MAX_CACHED_PIXELS = 16 * 1024 * 1024


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


def x265_params(q: int, info: bool = False, min_side: int = 64) -> dict[str, object]:
    """x265 parameters (besides preset and tune) of one BPG picture at quantizer ``q``."""
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
        **TUNING,
    }
    if min_side < 64:
        # x265 shrinks the CTU to fit small pictures but then rejects the slow presets'
        # transform depth; pick both explicitly (the header records whatever the SPS says)
        ctu = 32 if min_side >= 32 else 16
        depth = 4 if ctu == 32 else 3
        params.update({"ctu": ctu, "tu-intra-depth": depth, "tu-inter-depth": depth})
    return params


def _fill_frame(frame, planes: list[np.ndarray]) -> None:
    for plane, data in zip(frame.planes, planes):
        h, w = data.shape
        buf = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
        buf[:h, :w] = data


class _Encoder:
    """One open x265 encoder for pictures of one size, format, q and effort."""

    def __init__(self, width: int, height: int, chroma_format_idc: int, q: int, effort: int,
                 info: bool = False):
        av = _av()
        self.width, self.height, self.pix_fmt = width, height, PIX_FMT[chroma_format_idc]
        self.chroma_format_idc = chroma_format_idc
        ctx = av.CodecContext.create("libx265", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = self.pix_fmt
        ctx.time_base = Fraction(1, 25)
        ctx.gop_size = 1
        params = x265_params(q, info, min(height, width))
        ctx.options = {"preset": PRESETS[effort], "tune": "ssim",
                       "x265-params": ":".join(f"{k}={v}" for k, v in params.items())}
        self.ctx = ctx
        self.pictures = 0
        self.first_flag: int | None = None   # the slice flag of picture 0 (None: not carried)

    def picture(self, planes: list[np.ndarray]) -> bytes:
        """Annex-B bytes of one picture, as a fresh encoder would write them."""
        frame = _av().VideoFrame(self.width, self.height, self.pix_fmt)
        _fill_frame(frame, planes)
        frame.pts = self.pictures
        packets = [bytes(p) for p in self.ctx.encode(frame)]
        self.pictures += 1
        if len(packets) != 1:
            raise BpgError(f"x265 returned {len(packets)} packets for one picture")
        return self._normalise(packets[0])

    def flush(self) -> bytes:
        return b"".join(bytes(p) for p in self.ctx.encode(None))

    def _normalise(self, stream: bytes) -> bytes:
        nals = split_annexb(stream)
        types = [nal_type(n) for n in nals]
        slices = [i for i, t in enumerate(types) if t < 32]
        if len(slices) != 1 or NAL_PPS not in types or NAL_SPS not in types:
            raise BpgError(f"x265 wrote NAL units {types}; expected one slice with its parameter sets")
        sps = parse_sps(nals[types.index(NAL_SPS)])
        pps = parse_pps(nals[types.index(NAL_PPS)])
        nal = nals[slices[0]]
        pos = slice_lfas_flag_position(nal, pps, sps.hevc_header.sample_adaptive_offset_enabled_flag,
                                       sps.chroma_format_idc)
        if self.pictures == 1:           # the first picture is a fresh encoder's: keep it
            self.first_flag = None if pos is None else (nal[pos >> 3] >> (7 - (pos & 7))) & 1
            return stream
        if (pos is None) != (self.first_flag is None):
            raise BpgError("x265 changed the slice header layout between pictures")
        if pos is None:
            return stream
        fixed = set_bit(nal, pos, self.first_flag)
        if fixed == nal:
            return stream
        start = stream.index(nal)     # the slice is the last NAL unit: rewrite it in place
        return stream[:start] + fixed + stream[start + len(nal):]


class _EncoderCache:
    """Open encoders of one thread, least recently used first out."""

    def __init__(self):
        self.pid = os.getpid()
        self.encoders: OrderedDict[tuple, _Encoder] = OrderedDict()
        self.fallbacks = 0   # pictures re-done on a fresh encoder (tests and benchmarks read it)
        self.reused = 0      # pictures coded by an encoder that had coded one before

    def get(self, key: tuple) -> _Encoder:
        enc = self.encoders.pop(key, None)
        if enc is None:
            width, height = key[0], key[1]
            if width * height > MAX_CACHED_PIXELS:
                raise _TooLarge
            enc = _Encoder(*key[:5])
        self.encoders[key] = enc
        while len(self.encoders) > MAX_ENCODERS or self.pixels() > MAX_CACHED_PIXELS:
            self.drop(next(iter(self.encoders)))
        return enc

    def pixels(self) -> int:
        return sum(k[0] * k[1] for k in self.encoders)

    def drop(self, key: tuple) -> None:
        enc = self.encoders.pop(key, None)
        if enc is not None:
            try:
                enc.flush()           # nothing is pending; this lets x265 end cleanly
            except Exception:  # noqa: BLE001 - a broken encoder is dropped all the same
                pass

    def clear(self) -> None:
        for key in list(self.encoders):
            self.drop(key)
        self.fallbacks = self.reused = 0


class _TooLarge(Exception):
    pass


_local = threading.local()
_all_caches: "weakref.WeakSet[_EncoderCache]" = weakref.WeakSet()


def _cache() -> _EncoderCache:
    cache = getattr(_local, "cache", None)
    if cache is None or cache.pid != os.getpid():
        cache = _local.cache = _EncoderCache()
        _all_caches.add(cache)
    return cache


def _after_fork_in_child() -> None:
    # x265's worker threads do not survive fork(): closing an inherited encoder would wait
    # for them forever, so the child keeps the parent's encoders alive, unused, until it exits
    cache = getattr(_local, "cache", None)
    if cache is not None:
        for enc in cache.encoders.values():
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(enc.ctx))
        cache.encoders.clear()
        _local.cache = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def clear_encoders() -> None:
    """Close the open encoders of every thread of this process (and zero their counters)."""
    for cache in list(_all_caches):
        if cache.pid == os.getpid():
            cache.clear()


def encoder_stats() -> dict[str, int]:
    """This thread's open encoders and fresh re-encodes (for tests and benchmarks)."""
    cache = _cache()
    return {"open": len(cache.encoders), "pixels": cache.pixels(), "reused": cache.reused,
            "fallbacks": cache.fallbacks}


def _check_size(width: int, height: int) -> None:
    if min(height, width) < 16:
        raise ValueError(f"x265 cannot encode a {width}x{height} picture: BPG over x265 needs "
                         f"images of at least 9x9 pixels (coded size padded to 16x16)")


def encode_planes(planes: list[np.ndarray], chroma_format_idc: int, q: int, effort: int,
                  reuse: bool = True) -> bytes:
    """Encode padded 8-bit planes (Y[, Cb, Cr]) as one IDR picture; returns Annex-B bytes.

    ``reuse``: feed the picture to this thread's open encoder of the same size and settings
    (same bytes as a fresh encoder, without x265's set-up)."""
    height, width = planes[0].shape
    _check_size(width, height)
    if reuse:
        cache = _cache()
        key = (width, height, chroma_format_idc, q, effort, tuple(TUNING.items()))
        try:
            enc = cache.get(key)
        except _TooLarge:
            enc = None
        if enc is not None:
            try:
                cache.reused += enc.pictures > 0
                return enc.picture(planes)
            except BaseException as exc:
                cache.drop(key)       # never reuse an encoder whose state is in doubt
                if not isinstance(exc, (BpgError, _av().FFmpegError)):
                    raise
                cache.fallbacks += 1  # unexpected output: the fresh encoder decides
    return fresh_encode(planes, chroma_format_idc, q, effort)


def fresh_encode(planes: list[np.ndarray], chroma_format_idc: int, q: int, effort: int,
                 info: bool = False) -> bytes:
    """One picture on a new encoder, closed afterwards (the reference for re-use)."""
    height, width = planes[0].shape
    _check_size(width, height)
    enc = _Encoder(width, height, chroma_format_idc, q, effort, info)
    frame = _av().VideoFrame(width, height, enc.pix_fmt)
    _fill_frame(frame, planes)
    frame.pts = 0
    out = [bytes(p) for p in enc.ctx.encode(frame)]
    return b"".join(out) + enc.flush()


def decode_annexb(stream: bytes) -> list[np.ndarray]:
    """Decode an Annex-B stream holding one picture; returns its planes (uint8, uncropped).

    Truncated data is an error, not a picture: FFmpeg's strict error detection (``explode``)
    catches a slice cut before its last row of coding tree units, and a second decode with
    junk appended to the slice catches a cut inside that row.  A complete slice ends with
    its own stop bit, so bytes after it can never change the picture; a cut one makes the
    decoder read past the end, where the first decode sees zeros and the second the junk.
    """
    first = _decode(stream)
    second = _decode(_with_junk(stream))
    if len(first) != len(second) or any(not np.array_equal(a, b) for a, b in zip(first, second)):
        raise BpgError("truncated BPG picture data: the last slice ends before its last coding "
                       "tree unit (the decoded picture depends on bytes past the end)")
    return first


_JUNK = b"\xa5" * 64   # no zero bytes: cannot form a start code or be stripped as trailing zeros


def _with_junk(stream: bytes) -> bytes:
    """The stream with junk appended to its last slice NAL unit (not to a suffix SEI)."""
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", stream)]
    ends = [s - 3 for s in starts[1:]] + [len(stream)]
    for start, end in reversed(list(zip(starts, ends))):
        if start < end and nal_type(stream[start:end]) < 32:
            while end > start and stream[end - 1] == 0:
                end -= 1          # trailing zero bytes (and a 4-byte start code's zero)
            return stream[:end] + _JUNK + stream[end:]
    return stream + _JUNK


def _decode(stream: bytes) -> list[np.ndarray]:
    av = _av()
    try:
        ctx = av.CodecContext.create("hevc", "r")
        ctx.thread_count = 1
        ctx.options = {"err_detect": "explode"}
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
        stream = fresh_encode([np.zeros((16, 16), np.uint8)], 0, 30, 1, info=True)
    except Exception as exc:  # pragma: no cover - only when the encoder is broken
        return f"unknown ({exc})"
    m = re.search(rb"x265 \(build \d+\) - ([^:\s]+)", stream)
    return m.group(1).decode("ascii", "replace") if m else "unknown"


def library_versions() -> dict[str, str]:
    av = _av()
    libs = av.library_versions
    out = {
        "x265": x265_version(),
        "ffmpeg": str(getattr(av, "ffmpeg_version_info", "unknown")),
        "libavcodec": ".".join(map(str, libs.get("libavcodec", ()))),
        "pyav": av.__version__,
    }
    if TUNING:
        out["x265_tuning"] = ":".join(f"{k}={v}" for k, v in TUNING.items())
    return out
