"""Per-image quality metrics: PSNR and SSIM between the clean crop x and x̃.

PSNR: over all R, G, B values together, peak 255: 10·log10(255² / MSE); identical images
give +inf (written as null in JSON).

SSIM convention (Wang et al. 2004, the common "Gaussian" variant): 11×11 Gaussian window
with σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, population (not sample) covariances, computed
on each of R, G, B separately over the "valid" region (no padding: windows never leave the
image), and averaged over pixels and channels.  This equals scikit-image's
``structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)`` and pytorch_msssim's ``ssim(win_size=11,
win_sigma=1.5)``; a test checks the first.
"""
from __future__ import annotations

import math

import numpy as np

SIGMA = 1.5
RADIUS = 5  # 11 taps: scikit-image's truncate=3.5 at sigma=1.5 gives the same window
K1, K2, PEAK = 0.01, 0.03, 255.0
_C1, _C2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2

_taps = np.exp(-0.5 * (np.arange(-RADIUS, RADIUS + 1) / SIGMA) ** 2)
WINDOW = (_taps / _taps.sum()).astype(np.float32)


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    diff = x.astype(np.int32) - y.astype(np.int32)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK * PEAK / mse)


def _blur_valid(stack: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur of (maps, H, W), keeping only fully covered positions.

    Eleven shifted multiply-adds per axis over the valid region: about half the time of
    scipy.ndimage.correlate1d, which also filters the borders we then throw away."""
    width = stack.shape[2] - 2 * RADIUS
    rows = WINDOW[0] * stack[:, :, :width]
    for k in range(1, 2 * RADIUS + 1):
        rows += WINDOW[k] * stack[:, :, k:k + width]
    height = stack.shape[1] - 2 * RADIUS
    out = WINDOW[0] * rows[:, :height]
    for k in range(1, 2 * RADIUS + 1):
        out += WINDOW[k] * rows[:, k:k + height]
    return out


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of two H×W×C (or H×W) uint8 images, convention above."""
    if x.shape != y.shape:
        raise ValueError(f"SSIM of images of different shapes {x.shape} and {y.shape}")
    a = x.astype(np.float32).reshape(x.shape[0], x.shape[1], -1).transpose(2, 0, 1)
    b = y.astype(np.float32).reshape(a.shape[1], a.shape[2], -1).transpose(2, 0, 1)
    if min(a.shape[1:]) < 2 * RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * RADIUS + 1}² pixels, got {x.shape[:2]}")
    # one blur call for the five moment maps of every channel: fewer, larger C loops
    m = _blur_valid(np.concatenate([a, b, a * a, b * b, a * b]))
    mu_a, mu_b, aa, bb, ab = np.split(m, 5)
    var_a = aa - mu_a * mu_a
    var_b = bb - mu_b * mu_b
    cov = ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    den = (mu_a * mu_a + mu_b * mu_b + _C1) * (var_a + var_b + _C2)
    return float(np.mean(num / den, dtype=np.float64))
