"""Our PSNR/SSIM against scikit-image's independent implementations."""
import math

import numpy as np
import pytest
import skimage.data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.codecs import create
from pipeline.crops import crop_image
from pipeline.metrics import psnr, ssim
from PIL import Image
from tests.conftest import synthetic_rgb


def _pairs():
    rng = np.random.default_rng(1)
    x = crop_image(Image.fromarray(skimage.data.astronaut()))
    yield x, create("jpeg", 10).decode(create("jpeg", 10).encode(x))
    yield x, create("j2k", 200).decode(create("j2k", 200).encode(x))
    s = synthetic_rgb(224, 224, seed=3)
    yield s, np.clip(s.astype(int) + rng.integers(-20, 21, s.shape), 0, 255).astype(np.uint8)
    c = crop_image(Image.fromarray(skimage.data.chelsea()))
    yield c, np.roll(c, 3, axis=1)


@pytest.mark.parametrize("pair", list(_pairs()))
def test_psnr_matches_skimage(pair):
    x, y = pair
    assert psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=255), abs=1e-9)


@pytest.mark.parametrize("pair", list(_pairs()))
def test_ssim_matches_skimage_gaussian_convention(pair):
    x, y = pair
    ref = structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255)
    assert ssim(x, y) == pytest.approx(ref, abs=2e-5)


def test_identical_images():
    x = synthetic_rgb(64, 80)
    assert math.isinf(psnr(x, x))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)


def test_ssim_orders_distortions():
    x = synthetic_rgb(224, 224, seed=5)
    mild = create("jpeg", 75).decode(create("jpeg", 75).encode(x))
    harsh = create("jpeg", 5).decode(create("jpeg", 5).encode(x))
    assert 1.0 > ssim(x, mild) > ssim(x, harsh) > 0.0


def test_ssim_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="different shapes"):
        ssim(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 31, 3), np.uint8))


@pytest.mark.parametrize("shape", [(223, 149), (40, 57, 1), (64, 48, 4), (31, 200, 3)])
def test_ssim_other_shapes_match_skimage(shape):
    """Gray, odd sizes and 4 channels go through the same filters (and the reused workspace
    must not leak between shapes)."""
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    if len(shape) == 3:
        ref = structural_similarity(x, y, channel_axis=-1, **kw)
    else:
        ref = structural_similarity(x, y, **kw)
    assert ssim(x, y) == pytest.approx(ref, abs=2e-5)
    assert psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=255), abs=1e-9)


def test_metrics_reject_non_uint8():
    with pytest.raises(TypeError, match="uint8"):
        ssim(np.zeros((32, 32, 3), np.float32), np.zeros((32, 32, 3), np.float32))
