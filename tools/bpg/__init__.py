"""BPG (Better Portable Graphics) encoder and decoder, in-process over PyAV (x265 + FFmpeg).

    from tools.bpg import encode, decode
    data = encode(rgb, q=41, effort=9, chroma="420")   # bytes of a .bpg file
    rgb2 = decode(data)                                # H×W×3 uint8

Compatible with BPG 0.9.8 (bpgenc/bpgdec): see tools/bpg/README.md for what was measured.
"""
from __future__ import annotations

import numpy as np

from . import color
from .container import (FORMAT_420, FORMAT_444, FORMAT_GRAY, FORMAT_420_MPEG2, FORMAT_422,
                        FORMAT_422_MPEG2, MAX_DIMENSION, BpgHeader, parse_header)
from .errors import BpgError
from .limits import DEFAULT_BUDGET, DecodeBudget, PixelBudgetError
from .paramsets import (NAL_AUD, NAL_IDR_N_LP, NAL_IDR_W_RADL, NAL_PPS, NAL_SPS, NAL_VPS, build_vps, nal_type,
                        parse_pps, parse_sps, slice_qp, split_annexb)

__all__ = ["encode", "decode", "read_header", "read_qp", "read_q", "BpgError", "BpgHeader", "CHROMA_FORMATS",
           "versions"]

#: chroma option -> BPG pixel_format
CHROMA_FORMATS = {"420": FORMAT_420, "444": FORMAT_444, "gray": FORMAT_GRAY}
_CHROMA_IDC = {FORMAT_420: 1, FORMAT_444: 3, FORMAT_GRAY: 0}
_START = b"\x00\x00\x01"


def read_header(data: bytes) -> BpgHeader:
    """Parse the header of a BPG file (raises BpgError on malformed/unsupported data)."""
    return parse_header(data)


def read_qp(data: bytes) -> int:
    """The slice QP of a BPG file's picture, read from its PPS and first slice header without
    decoding: bpgenc's -q for a file it wrote (a constant-QP encode).  BpgError when the file
    is malformed or the NAL units are not there."""
    h = parse_header(data)
    nals = split_annexb(_START + _hevc_payload(data, h))
    pps = next((n for n in nals if nal_type(n) == NAL_PPS), None)
    idr = next((n for n in nals if nal_type(n) in (NAL_IDR_W_RADL, NAL_IDR_N_LP)), None)
    if pps is None or idr is None:
        raise BpgError("invalid BPG picture data: no PPS and IDR slice to read the QP from")
    try:
        return slice_qp(idr, parse_pps(pps), h.hevc_header.sample_adaptive_offset_enabled_flag,
                        h.chroma_format_idc)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, BpgError):
            raise
        raise BpgError(f"truncated BPG slice header ({exc})") from None


#: x265 in constant-QP mode (bpgenc's and ours) codes the I slice ``6*log2(ipratio)`` below the
#: QP it is given, ipratio being 1.4 by default: 2.91, rounded to 3 (the genuine vectors agree)
I_SLICE_QP_OFFSET = 3


def read_q(data: bytes) -> int:
    """bpgenc's -q that wrote this file, from its slice QP (:func:`read_qp`); a slice QP of 0
    (q 0 to 3) reads as 3."""
    return min(51, read_qp(data) + I_SLICE_QP_OFFSET)


def _check_args(q, effort, chroma) -> None:
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 0 <= q <= 51:
        raise ValueError(f"BPG q (quantizer) must be an integer in 0..51, got {q!r}")
    if isinstance(effort, bool) or not isinstance(effort, (int, np.integer)) or not 1 <= effort <= 9:
        raise ValueError(f"BPG effort (-m level) must be an integer in 1..9, got {effort!r}")
    if chroma not in CHROMA_FORMATS:
        raise ValueError(f"BPG chroma must be one of {', '.join(CHROMA_FORMATS)}, got {chroma!r}")


def _planes_for(rgb: np.ndarray, chroma: str) -> list[np.ndarray]:
    """Colour-convert and sub-sample as bpgenc does, then pad to the 8×8 minimum CB."""
    h, w = rgb.shape[:2]
    h8, w8 = -(-h // 8) * 8, -(-w // 8) * 8
    if chroma == "gray":
        y = rgb if rgb.ndim == 2 else color.rgb_to_gray(rgb)
        return [color.pad_plane(y, h8, w8)]
    y, cb, cr = color.rgb_to_ycbcr(rgb)
    if chroma == "420":
        cb, cr = color.downsample_420(cb), color.downsample_420(cr)
        return [color.pad_plane(y, h8, w8), color.pad_plane(cb, h8 // 2, w8 // 2),
                color.pad_plane(cr, h8 // 2, w8 // 2)]
    return [color.pad_plane(p, h8, w8) for p in (y, cb, cr)]


def encode(rgb: np.ndarray, q: int = 41, effort: int = 9, chroma: str = "420", reuse: bool = True) -> bytes:
    """H×W×3 uint8 RGB (or H×W gray with chroma="gray") -> bytes of a BPG file.

    ``q`` is bpgenc's -q (0..51, lower is better), ``effort`` its -m (1..9, 9 = slowest
    x265 preset), ``chroma`` its -f (420 or 444) or "gray".  ``reuse`` keeps the x265
    encoder open for the next picture of the same size and settings (same bytes, faster);
    ``reuse=False`` opens and closes one for this picture alone.
    """
    from . import hevc

    _check_args(q, effort, chroma)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or not (rgb.ndim == 3 and rgb.shape[2] == 3
                                     or rgb.ndim == 2 and chroma == "gray"):
        raise ValueError(f"BPG encode needs an H×W×3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    if not (0 < h <= MAX_DIMENSION and 0 < w <= MAX_DIMENSION):
        raise ValueError(f"BPG encode: image size {w}x{h} outside 1..{MAX_DIMENSION}")
    hevc._check_size(-(-w // 8) * 8, -(-h // 8) * 8)   # before any colour work
    pixel_format = CHROMA_FORMATS[chroma]
    planes = _planes_for(rgb, chroma)
    stream = hevc.encode_planes(planes, _CHROMA_IDC[pixel_format], int(q), int(effort), reuse=reuse)
    return _package(stream, pixel_format, w, h)


def _package(stream: bytes, pixel_format: int, width: int, height: int) -> bytes:
    """An encoder's Annex-B picture -> BPG file: header, compact SPS fields, data minus VPS/SPS."""
    nals = split_annexb(stream)
    types = [nal_type(n) for n in nals]
    if NAL_SPS not in types or NAL_PPS not in types:
        raise BpgError(f"the encoder's output lacks SPS/PPS (NAL types {types})")
    sps = parse_sps(nals[types.index(NAL_SPS)])
    min_cb = sps.hevc_header.min_cb_size
    coded = (-(-width // min_cb) * min_cb, -(-height // min_cb) * min_cb)
    expected = (_CHROMA_IDC[pixel_format], *coded, 0, 0, 1)
    got = (sps.chroma_format_idc, sps.pic_width, sps.pic_height, sps.bit_depth_luma_minus8,
           sps.bit_depth_chroma_minus8, sps.amp_enabled_flag)
    if got != expected or min_cb != 8:
        raise BpgError(f"the encoder wrote an SPS BPG cannot describe: {got} (expected {expected}), "
                       f"min CB {min_cb}")
    # access unit delimiters and parameter sets the decoder rebuilds are dropped
    kept = [n for n, t in zip(nals, types) if t not in (NAL_VPS, NAL_SPS, NAL_AUD)]
    header = BpgHeader(pixel_format=pixel_format, picture_width=width, picture_height=height,
                       picture_data_length=0, hevc_header=sps.hevc_header)
    return header.encode() + _START.join(kept)


def _hevc_payload(data: bytes, h: BpgHeader) -> bytes:
    payload = bytes(data[h.data_offset:])
    if h.picture_data_length:
        # picture_data_length counts from the hevc_header_length field (libbpg's reading)
        available = len(data) - h.hevc_header_start
        if h.picture_data_length > available:
            raise BpgError(f"truncated BPG file: picture_data_length is {h.picture_data_length} "
                           f"but only {available} bytes follow")
        payload = bytes(data[h.data_offset:h.hevc_header_start + h.picture_data_length])
    if len(payload) < 3:
        raise BpgError(f"truncated BPG file: {len(payload)} bytes of HEVC picture data")
    if payload[0] & 0x80 or nal_type(payload) != NAL_PPS:
        raise BpgError(f"invalid BPG picture data: the first NAL unit is type {nal_type(payload)}, "
                       f"expected a PPS ({NAL_PPS})")
    _check_nal_units(split_annexb(_START + payload))
    return payload


def _check_nal_units(nals: list[bytes]) -> None:
    """The picture's size and format are the header's: a VPS or SPS in the picture data would
    replace the one the decoder rebuilds from the header (a 64x64 header carrying an 8192x8192
    SPS decodes 8192x8192, past the budget checked on the header), so one is refused; and a
    still image is one picture, so a second first slice is refused too (each would be decoded)."""
    pictures = 0
    for nal in nals:
        kind = nal_type(nal)
        if kind in (NAL_VPS, NAL_SPS):
            raise BpgError(f"invalid BPG picture data: a {'VPS' if kind == NAL_VPS else 'SPS'} NAL unit; the "
                           "parameter sets are the header's")
        if kind < NAL_VPS and len(nal) > 2 and nal[2] & 0x80:     # first_slice_segment_in_pic_flag
            pictures += 1
            if pictures > 1:
                raise BpgError("invalid BPG picture data: more than one picture (a still image holds one)")


def check_size(h: BpgHeader, budget: DecodeBudget | None = None) -> None:
    """Refuse a picture above the budget's ``max_pixels`` from its header alone, before any
    allocation (a BpgError: the tool's one error type)."""
    try:
        (budget or DEFAULT_BUDGET).check_pixels(h.picture_width, h.picture_height, "BPG picture")
    except PixelBudgetError as exc:
        raise BpgError(str(exc)) from None


def decode(data: bytes, budget: DecodeBudget | None = None) -> np.ndarray:
    """Bytes of a BPG file -> H×W×3 uint8 RGB (as bpgdec's RGB output).

    ``budget`` (None: the default :class:`~tools.bpg.limits.DecodeBudget`): a picture whose
    header announces more pixels is refused (BpgError) before anything is decoded; the
    picture data may not replace the header's parameter sets nor hold a second picture.
    Truncated or corrupt picture data is a BpgError too."""
    from . import hevc

    h = parse_header(data)
    check_size(h, budget)
    if h.pixel_format in (FORMAT_422, FORMAT_422_MPEG2):
        raise BpgError(f"unsupported BPG feature: pixel_format {h.pixel_format} (4:2:2)")
    if h.pixel_format == FORMAT_420_MPEG2:
        raise BpgError("unsupported BPG feature: pixel_format 4 (4:2:0 with MPEG-2 chroma siting)")
    payload = _hevc_payload(data, h)
    stream = (b"\x00\x00\x00\x01" + build_vps() + b"\x00\x00\x00\x01" + h.sps()
              + b"\x00\x00\x00\x01" + payload)
    planes = hevc.decode_annexb(stream)
    width, height = h.picture_width, h.picture_height
    if planes[0].shape[0] < height or planes[0].shape[1] < width:
        raise BpgError(f"invalid BPG picture data: decoded {planes[0].shape[1]}x{planes[0].shape[0]}, "
                       f"header says {width}x{height}")
    y = planes[0][:height, :width]
    if h.pixel_format == FORMAT_GRAY:
        if len(planes) != 1:
            raise BpgError("invalid BPG picture data: gray header but colour picture")
        return np.repeat(y[:, :, None], 3, axis=2)
    if len(planes) != 3:
        raise BpgError("invalid BPG picture data: colour header but gray picture")
    if h.pixel_format == FORMAT_420:
        ch, cw = (height + 1) // 2, (width + 1) // 2
        if planes[1].shape[0] < ch or planes[1].shape[1] < cw:
            raise BpgError("invalid BPG picture data: chroma planes smaller than the header implies")
        cb = color.upsample_420(planes[1][:ch, :cw], height, width)
        cr = color.upsample_420(planes[2][:ch, :cw], height, width)
    else:
        cb, cr = planes[1][:height, :width], planes[2][:height, :width]
        if cb.shape != y.shape:
            raise BpgError("invalid BPG picture data: 4:4:4 header but sub-sampled chroma")
    return color.ycbcr_to_rgb(y, cb, cr)


def versions() -> dict[str, str]:
    """Versions of x265, FFmpeg's libavcodec and PyAV behind this implementation."""
    from . import hevc

    return hevc.library_versions()
