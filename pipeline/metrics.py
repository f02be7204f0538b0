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

Speed matters here: on JPEG settings SSIM was the largest cost of the whole pipeline (more
than loading, cropping, encoding and decoding together).  OpenCV's separable filter does
the four Gaussian blurs about 5x faster than NumPy shifted sums, and every intermediate
lives in a per-thread workspace that is reused from image to image, because allocating
fresh arrays (page faults) cost as much as the arithmetic.  Measured on Imagenette crops:
2.3 ms per 224² image instead of 7.6 ms (docs/benchmarks.md, "Pipeline").
"""
from __future__ import annotations

import math
import threading

import cv2
import numpy as np

SIGMA = 1.5
RADIUS = 5  # 11 taps: scikit-image's truncate=3.5 at sigma=1.5 gives the same window
K1, K2, PEAK = 0.01, 0.03, 255.0
_C1, _C2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2

_taps = np.exp(-0.5 * (np.arange(-RADIUS, RADIUS + 1) / SIGMA) ** 2)
WINDOW = (_taps / _taps.sum()).astype(np.float32)

# The pipeline runs one worker process per core: OpenCV's own thread pool would only
# oversubscribe the cores.
cv2.setNumThreads(1)
_F32 = cv2.CV_32F
_MAX_CV_CHANNELS = 4
_local = threading.local()


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    if x.shape != y.shape:
        raise ValueError(f"PSNR of images of different shapes {x.shape} and {y.shape}")
    sse = cv2.norm(_as_u8(x), _as_u8(y), cv2.NORM_L2SQR)
    return math.inf if sse == 0 else 10.0 * math.log10(PEAK * PEAK * x.size / sse)


def _as_u8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise TypeError(f"metrics take uint8 images, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] > _MAX_CV_CHANNELS:
        raise ValueError(f"metrics take at most {_MAX_CV_CHANNELS} channels, got {image.shape[2]}")
    return image


def _workspace(shape: tuple) -> list[np.ndarray]:
    ws = getattr(_local, "ws", None)
    if ws is None or ws[0] != shape:
        ws = (shape, [np.empty(shape, np.float32) for _ in range(6)])
        _local.ws = ws
    return ws[1]


def _blur(src: np.ndarray, dst: np.ndarray) -> None:
    cv2.sepFilter2D(src, _F32, WINDOW, WINDOW, dst=dst)


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of two H×W×C (C ≤ 4) or H×W uint8 images, convention above."""
    if x.shape != y.shape:
        raise ValueError(f"SSIM of images of different shapes {x.shape} and {y.shape}")
    if min(x.shape[:2]) < 2 * RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * RADIUS + 1}² pixels, got {x.shape[:2]}")
    x, y = _as_u8(x), _as_u8(y)
    if x.ndim == 3 and x.shape[2] == 1:
        x, y = x[:, :, 0], y[:, :, 0]
    p, q, mu_a, mu_b, ab, sq = _workspace(x.shape)
    _blur(x, mu_a)
    _blur(y, mu_b)
    cv2.multiply(x, y, dst=p, dtype=_F32)
    _blur(p, ab)
    # SSIM needs var_a + var_b, never each alone, so E[a²+b²] is blurred as one map
    cv2.multiply(x, x, dst=p, dtype=_F32)
    cv2.multiply(y, y, dst=q, dtype=_F32)
    cv2.add(p, q, dst=p)
    _blur(p, sq)
    # The borders were filtered with padding; keep the windows that stay inside the image.
    valid = (slice(RADIUS, -RADIUS), slice(RADIUS, -RADIUS))
    mu_a, mu_b, ab, sq, mu_ab, mu_sq = mu_a[valid], mu_b[valid], ab[valid], sq[valid], p[valid], q[valid]
    np.multiply(mu_a, mu_b, out=mu_ab)
    np.multiply(mu_a, mu_a, out=mu_a)
    np.multiply(mu_b, mu_b, out=mu_b)
    np.add(mu_a, mu_b, out=mu_sq)
    ab -= mu_ab          # covariance
    ab *= 2
    ab += _C2
    sq -= mu_sq          # var_a + var_b
    sq += _C2
    mu_ab *= 2
    mu_ab += _C1
    mu_sq += _C1
    mu_ab *= ab          # numerator
    mu_sq *= sq          # denominator
    np.divide(mu_ab, mu_sq, out=mu_ab)
    return float(mu_ab.sum(dtype=np.float64)) / mu_ab.size
