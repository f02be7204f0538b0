"""Crops must be pixel-identical to torchvision's Resize(256, BICUBIC) + CenterCrop(224)."""
import io

import numpy as np
import pytest
import skimage.data
from PIL import Image
from torchvision import transforms

from pipeline.crops import crop_image, load_crop, to_rgb
from tests.conftest import shared_path, synthetic_rgb

REFERENCE = transforms.Compose([
    transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
    transforms.CenterCrop(224),
])


def reference(img: Image.Image) -> np.ndarray:
    return np.asarray(REFERENCE(img.convert("RGB")))


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (256, 300), (301, 256), (999, 257), (123, 77)])
def test_synthetic_sizes_match_torchvision(size):
    w, h = size
    img = Image.fromarray(synthetic_rgb(h, w, seed=w))
    got = crop_image(img)
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, reference(img))


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "camera"])
def test_skimage_photos_match_torchvision(name):
    img = Image.fromarray(getattr(skimage.data, name)())  # camera is grayscale
    np.testing.assert_array_equal(crop_image(img), reference(img))


def test_modes_gray_palette_cmyk_match_pillow_conversion():
    rgb = Image.fromarray(synthetic_rgb(240, 320))
    for mode in ("L", "P", "CMYK", "YCbCr"):
        img = rgb.convert(mode)
        np.testing.assert_array_equal(crop_image(img), reference(img), err_msg=mode)


def test_alpha_is_composited_over_white():
    arr = np.zeros((300, 300, 4), np.uint8)
    arr[..., :3] = (10, 200, 30)
    arr[:, :150, 3] = 255        # left half opaque green, right half fully transparent
    out = to_rgb(Image.fromarray(arr, "RGBA"))
    a = np.asarray(out)
    assert (a[:, :150] == (10, 200, 30)).all()
    assert (a[:, 150:] == 255).all()  # not the hidden green behind the transparent pixels


def test_16bit_gray_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 300 * 300).reshape(300, 300).astype(np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    a = np.asarray(to_rgb(img))
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(a[..., 0], expected)
    assert a.max() == 255 and a[150, 150, 0] < 255  # Pillow's own convert would clip to 255


def test_16bit_png_file_roundtrip(tmp_path):
    values = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256) % 65536).astype(np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(values).save(path)
    crop = load_crop(path)
    assert crop.shape == (224, 224, 3)
    assert crop.max() > 200  # scaled into 0..255, not clipped into a white image
    assert len(np.unique(crop)) > 100


def test_truncated_file_raises(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(synthetic_rgb(300, 300)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(OSError):
        load_crop(path)


@pytest.mark.shared
def test_imagenette_files_match_torchvision():
    folder = shared_path("imagenette", "val")
    files = sorted(folder.glob("*/*.JPEG"))[::400]
    assert files
    for f in files:
        with Image.open(f) as img:
            np.testing.assert_array_equal(load_crop(f), reference(img), err_msg=str(f))
