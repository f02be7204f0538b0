"""One colour conversion: what the receiver feeds the model from a received picture equals what
the pipeline makes of the same file as a source image (``pipeline.crops.load_crop``, the
reference), whatever its mode: 16-bit grey, colour hidden behind alpha 0, palette with
transparency, grey + alpha, CMYK."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.crops import load_crop
from tests.conftest import synthetic_rgb


def _picture(mode: str, size=(240, 232)) -> Image.Image:
    w, h = size
    rgb = synthetic_rgb(h, w, seed=11)
    rng = np.random.default_rng(3)
    if mode == "I;16":
        ramp = np.linspace(0, 65535, w * h).reshape(h, w).astype(np.uint16)
        return Image.fromarray(ramp)
    if mode == "RGBA":
        alpha = np.where(np.arange(w)[None, :] < w // 2, 0, 255).astype(np.uint8).repeat(h, 0)
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)       # colour hidden behind alpha 0
        return Image.fromarray(np.dstack([noise, alpha]))
    if mode == "LA":
        grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
        alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
        return Image.fromarray(np.dstack([grey, alpha]))
    if mode == "P":
        img = Image.fromarray(rgb).quantize(16)
        img.info["transparency"] = 0
        return img
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"),
                                      ("CMYK", "JPEG"), ("L", "PNG")])
def test_the_receiver_sees_what_the_pipeline_sees(tmp_path, mode, fmt):
    from receiver import core
    path = tmp_path / f"picture.{fmt.lower()}"
    _picture(mode).save(path, fmt, **({"transparency": 0} if mode == "P" else {}))
    x, pred = core.read_input(path)
    reference = load_crop(path)
    assert pred.cropped and x.shape == reference.shape == (224, 224, 3)
    np.testing.assert_array_equal(x, reference)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    """Pillow's convert("RGB") clips 16-bit samples at 255: the ramp read 99.96% white."""
    from pipeline.codecs import decode_any
    path = tmp_path / "ramp.png"
    _picture("I;16", (224, 224)).save(path)
    rgb = decode_any(path.read_bytes())
    assert rgb.shape == (224, 224, 3) and (rgb == 255).mean() < 0.01 and abs(rgb.mean() - 127.5) < 2


def test_colour_behind_alpha_0_is_white(tmp_path):
    from pipeline.codecs import decode_any
    path = tmp_path / "hidden.png"
    _picture("RGBA", (224, 224)).save(path)
    rgb = decode_any(path.read_bytes())
    assert (rgb[:, :112] == 255).all()


def test_jpeg_xl_alpha_and_16_bit_are_converted_the_same_way():
    imagecodecs = pytest.importorskip("imagecodecs")
    from pipeline.codecs import decode_any
    from pipeline.pixels import to_rgb_array
    rng = np.random.default_rng(5)
    rgba = np.dstack([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.full((64, 64), 0, np.uint8)])
    data = bytes(imagecodecs.jpegxl_encode(rgba, lossless=True))
    assert (decode_any(data) == 255).all()                  # alpha 0 everywhere: white, not the noise
    grey16 = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = bytes(imagecodecs.jpegxl_encode(grey16, lossless=True))
    np.testing.assert_array_equal(decode_any(data), to_rgb_array(grey16))
