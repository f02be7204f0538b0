"""BPG colour path against straightforward per-sample implementations of bpg.md's facts."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_rgb
from tools.bpg import color


def _ref_down_1d(s, taps=(57, 17, -8, -4, 2)):
    """bpg.md: pairs (s[2i-k] + s[2i+1+k]) weighted by taps, edges repeated (unnormalised)."""
    n = len(s)
    at = lambda j: s[min(max(j, 0), n - 1)]  # noqa: E731
    return [sum(c * (at(2 * i - k) + at(2 * i + 1 + k)) for k, c in enumerate(taps))
            for i in range((n + 1) // 2)]


def _ref_up_1d(s, n_out):
    """bpg.md: 7-tap phase-0.5 filter and its mirror, edges repeated (unnormalised, x64)."""
    a, b = (-1, 4, -10, 57, 18, -6, 2), (2, -6, 18, 57, -10, 4, -1)
    n = len(s)
    at = lambda j: s[min(max(j, 0), n - 1)]  # noqa: E731
    out = []
    for o in range(n_out):
        i, taps = o // 2, (b if o % 2 == 0 else a)
        out.append(sum(c * at(i - 3 + k) for k, c in enumerate(taps)))
    return out


@pytest.mark.parametrize("h,w", [(9, 11), (8, 8), (1, 5), (6, 1)])
def test_downsample_matches_reference_loops(h, w):
    rng = np.random.default_rng(h * 100 + w)
    x = rng.integers(0, 256, (h, w)).astype(np.int64)
    rows = np.array([[(v + 1) >> 1 for v in _ref_down_1d(list(r))] for r in x])
    ref = np.array([_ref_down_1d(list(c)) for c in rows.T]).T
    ref = np.clip((ref + 4096) >> 13, 0, 255)
    assert np.array_equal(color.downsample_420(x.astype(np.uint8)), ref)


@pytest.mark.parametrize("h,w", [(9, 11), (8, 8), (1, 5), (7, 2)])
def test_upsample_matches_reference_loops(h, w):
    rng = np.random.default_rng(h * 100 + w + 1)
    c = rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2)).astype(np.int64)
    cols = np.array([_ref_up_1d(list(col), h) for col in c.T]).T
    ref = np.array([_ref_up_1d(list(r), w) for r in cols])
    ref = np.clip((ref + 2048) >> 12, 0, 255)
    assert np.array_equal(color.upsample_420(c.astype(np.uint8), h, w), ref)


def test_flat_chroma_survives_down_and_up_sampling():
    flat = np.full((13, 17), 77, np.uint8)
    assert np.array_equal(color.upsample_420(color.downsample_420(flat), 13, 17), flat)


def test_rgb_ycbcr_match_the_bt601_formulas():
    rgb = synthetic_rgb(32, 40, seed=3)
    ycc = color.rgb_to_ycbcr(rgb).astype(float)
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 + (b - y) / (2 * (1 - 0.114))
    cr = 128 + (r - y) / (2 * (1 - 0.299))
    for got, want in zip(ycc, (y, cb, cr)):
        assert np.abs(got - np.clip(np.round(want), 0, 255)).max() <= 1
    back = color.ycbcr_to_rgb(*color.rgb_to_ycbcr(rgb)).astype(int)
    assert np.abs(back - rgb).max() <= 2  # 8-bit YCbCr round trip


def test_grays_stay_gray():
    v = np.arange(256, dtype=np.uint8)
    rgb = np.stack([v, v, v], -1)[None]
    y, cb, cr = color.rgb_to_ycbcr(rgb)
    assert np.array_equal(y[0], v) and (cb == 128).all() and (cr == 128).all()
    assert np.array_equal(color.ycbcr_to_rgb(y, cb, cr), rgb)
    assert np.array_equal(color.rgb_to_gray(rgb), y)
