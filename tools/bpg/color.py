"""BPG's colour path, vectorised: RGB <-> YCbCr BT.601 full range in fixed point, and the
chroma down/up-sampling filters of bpgenc/bpgdec (JPEG siting, phase 0.5).

Fixed-point widths follow the reference tools so rounding ties fall the same way; all
arithmetic is int64 NumPy on whole planes.
"""
from __future__ import annotations

import numpy as np

KR, KB = 0.299, 0.114  # BT.601

# -- encoder side: RGB -> YCbCr --------------------------------------------------------
# bpgenc scales by 2**(31 - out_bit_depth) so one lrint'ed coefficient covers 8..12 bits.
_ENC_SHIFT = 31 - 8
_ENC_MULT = 255 * (1 << _ENC_SHIFT) / 255
_RGB_TO_YCC = np.array([
    [KR, 1 - KR - KB, KB],
    [-0.5 * KR / (1 - KB), -0.5 * (1 - KR - KB) / (1 - KB), 0.5],
    [0.5, -0.5 * (1 - KR - KB) / (1 - KR), -0.5 * KB / (1 - KR)],
])
# np.rint rounds half to even like lrint in the default rounding mode
_RGB_TO_YCC_FIXED = np.rint(_RGB_TO_YCC * _ENC_MULT).astype(np.int64)


# per-value products as int32 lookup tables: every sum below stays under 2**31 (as in the
# reference's int arithmetic), and table look-ups are much faster than int64 multiplies
_V = np.arange(256, dtype=np.int64)
_ENC_LUT = (_RGB_TO_YCC_FIXED[:, :, None] * _V).astype(np.int32)  # [out, in channel, value]


def _convert_row(rgb: np.ndarray, k: int) -> np.ndarray:
    lut = _ENC_LUT[k]
    acc = lut[0][rgb[..., 0]] + lut[1][rgb[..., 1]]
    acc += lut[2][rgb[..., 2]]
    acc += 1 << (_ENC_SHIFT - 1)
    acc >>= _ENC_SHIFT
    if k:
        acc += 128
    return np.clip(acc, 0, 255).astype(np.uint8)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 RGB -> 3×H×W uint8 (Y, Cb, Cr), full range, chroma centred on 128."""
    return np.stack([_convert_row(rgb, k) for k in range(3)])


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """The Y plane alone (what a gray BPG of a colour image stores)."""
    return _convert_row(rgb, 0)


# -- chroma down-sampling (bpgenc, phase 0.5) -------------------------------------------
# taps for the sample pairs (s[2i-k] + s[2i+1+k]), k = 0..4; they sum to 128
_DOWN_TAPS = (57, 17, -8, -4, 2)


def _decimate_axis(x: np.ndarray, axis: int) -> np.ndarray:
    """Unnormalised (x128) half-band decimation along ``axis`` with edge samples repeated."""
    n = x.shape[axis]
    n2 = (n + 1) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (4, 6)  # taps reach 4 before 2i and 5 after; +1 so odd sizes pair up
    xp = np.pad(x, pad, mode="edge")
    acc = np.zeros(x.shape[:axis] + (n2,) + x.shape[axis + 1:], dtype=np.int32)

    def take(start):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(start, start + 2 * n2, 2)
        return xp[tuple(sl)]

    for k, c in enumerate(_DOWN_TAPS):
        acc += c * (take(4 - k) + take(4 + 1 + k))
    return acc


def downsample_420(plane: np.ndarray) -> np.ndarray:
    """H×W uint8 chroma -> ceil(H/2)×ceil(W/2) uint8, bpgenc's filter.

    Horizontal first; bpgenc keeps the horizontal result at x64 (>>1 with rounding),
    the vertical pass then shifts by 13 with rounding and clips.
    """
    h = (_decimate_axis(plane.astype(np.int32), 1) + 1) >> 1
    v = (_decimate_axis(h, 0) + (1 << 12)) >> 13
    return np.clip(v, 0, 255).astype(np.uint8)


# -- chroma up-sampling (bpgdec, phase 0.5) ---------------------------------------------
# output sample 2i sits at chroma position i - 1/4, 2i+1 at i + 1/4; taps over s[i-3..i+3]
_UP_EVEN = np.array((2, -6, 18, 57, -10, 4, -1), dtype=np.int64)
_UP_ODD = _UP_EVEN[::-1].copy()


def _interp_axis(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Unnormalised (x64) 2× interpolation along ``axis``, edges repeated, n_out samples."""
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (3, 3)
    xp = np.pad(x, pad, mode="edge")
    out_shape = list(x.shape)
    out_shape[axis] = 2 * n
    out = np.empty(out_shape, dtype=np.int32)

    def take(k):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(k, k + n)
        return xp[tuple(sl)]

    even = sum(int(c) * take(k) for k, c in enumerate(_UP_EVEN))
    odd = sum(int(c) * take(k) for k, c in enumerate(_UP_ODD))
    sl_even = [slice(None)] * x.ndim
    sl_even[axis] = slice(0, None, 2)
    sl_odd = [slice(None)] * x.ndim
    sl_odd[axis] = slice(1, None, 2)
    out[tuple(sl_even)] = even
    out[tuple(sl_odd)] = odd
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(0, n_out)
    return out[tuple(sl)]


def upsample_420(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """ceil(H/2)×ceil(W/2) chroma -> H×W uint8, bpgdec's filter.

    bpgdec interpolates vertically first and keeps the x64 result, then horizontally, with a
    single rounding (>>12) and clip at the end.
    """
    v = _interp_axis(plane.astype(np.int32), 0, height)
    hv = _interp_axis(v, 1, width)
    return np.clip((hv + (1 << 11)) >> 12, 0, 255).astype(np.uint8)


# -- decoder side: YCbCr -> RGB ------------------------------------------------------------
_DEC_SHIFT = 30 - 8
_DEC_MULT = 255 * (1 << _DEC_SHIFT) / 255
_Y_ONE = int(np.rint(_DEC_MULT))
_C_R_CR = int(np.rint(2 * (1 - KR) * _DEC_MULT))
_C_G_CB = int(np.rint(2 * KB * (1 - KB) / (1 - KB - KR) * _DEC_MULT))
_C_G_CR = int(np.rint(2 * KR * (1 - KR) / (1 - KB - KR) * _DEC_MULT))
_C_B_CB = int(np.rint(2 * (1 - KB) * _DEC_MULT))


_Y_LUT = (_V * _Y_ONE + (1 << (_DEC_SHIFT - 1))).astype(np.int32)
_R_CR_LUT = (_C_R_CR * (_V - 128)).astype(np.int32)
_G_CB_LUT = (-_C_G_CB * (_V - 128)).astype(np.int32)
_G_CR_LUT = (-_C_G_CR * (_V - 128)).astype(np.int32)
_B_CB_LUT = (_C_B_CB * (_V - 128)).astype(np.int32)


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Full-size Y, Cb, Cr uint8 planes -> H×W×3 uint8 RGB (bpgdec's fixed point).

    Sums stay within int32 for 8-bit input, as in bpgdec's own int arithmetic.
    """
    yv = _Y_LUT[y]
    out = np.empty(y.shape + (3,), dtype=np.uint8)
    for k, acc in enumerate((yv + _R_CR_LUT[cr], yv + _G_CB_LUT[cb] + _G_CR_LUT[cr], yv + _B_CB_LUT[cb])):
        acc >>= _DEC_SHIFT
        np.clip(acc, 0, 255, out=acc)
        out[..., k] = acc
    return out


def pad_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Repeat the last row/column up to height×width (bpgenc pads to the min CB size)."""
    h, w = plane.shape
    if (h, w) == (height, width):
        return np.ascontiguousarray(plane)
    return np.pad(plane, ((0, height - h), (0, width - w)), mode="edge")
