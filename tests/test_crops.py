"""Crops must be pixel-identical to torchvision's Resize(256, BICUBIC) + CenterCrop(224)."""
import io

import numpy as np
import pytest
import skimage.data
from PIL import Image
from torchvision import transforms

from pipeline.crops import crop_image, load_crop, to_rgb
from pipeline.limits import DecodeBudget
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


# -- odd aspect ratios, the pixel budget and the formats list -------------

ODD = [(2000, 20), (20, 2000), (1000, 3), (3, 1000), (257, 3001), (4000, 223), (225, 224), (224, 225), (1, 1),
       (1, 300), (300, 1), (511, 255)]


@pytest.mark.parametrize("size", ODD)
def test_odd_aspect_ratios_match_torchvision(size):
    w, h = size
    img = Image.fromarray(synthetic_rgb(h, w, seed=w + h))
    np.testing.assert_array_equal(crop_image(img), reference(img))


def _record_resizes(monkeypatch) -> list:
    sizes = []
    original = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return original(self, size, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "resize", resize)
    return sizes


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (83, 531), (3000, 40), (7, 3000)])
def test_over_budget_resizes_only_the_crop_region(size, monkeypatch):
    """Below the budget the resize is torchvision's (checked above); above it only the crop's
    region is resized: 224² pixels, within 2 levels of torchvision (measured: 0 on landscape,
    up to 2 on ~20% of values in portrait shapes)."""
    w, h = size
    img = Image.fromarray(synthetic_rgb(h, w, seed=5))
    expected = reference(img)
    sizes = _record_resizes(monkeypatch)
    got = crop_image(img, budget=DecodeBudget(max_pixels=40_000))   # every resize of these would exceed it
    assert sizes == [(224, 224)]
    assert got.shape == (224, 224, 3)
    assert np.abs(got.astype(int) - expected).max() <= 2


def test_long_thin_jpeg_is_cropped_without_gigabytes(tmp_path):
    """A 3 KB JPEG of 10000x2 took 1.4 GB (Resize(256) first makes it 1,280,000x256).  Peak
    memory of a fresh process decoding and cropping it must stay far below that."""
    import subprocess
    import sys

    path = tmp_path / "thin.jpg"
    Image.fromarray(synthetic_rgb(2, 10000, seed=1)).save(path, quality=90)
    assert path.stat().st_size < 100_000   # a small file that announces a long picture
    code = ("import resource, sys; from pipeline.crops import load_crop; "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; x = load_crop(sys.argv[1]); "
            "print(x.shape, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    shape, grew_kb = out.rsplit(" ", 1)
    assert shape.strip() == "(224, 224, 3)"
    assert int(grew_kb) < 100_000, f"cropping a 10000x2 JPEG grew the process by {int(grew_kb) // 1024} MB"


def test_long_thin_crop_equals_the_exact_two_pass_resize():
    """Pillow resizes in two 1-D passes (horizontal, then vertical), so for a landscape image
    cutting the needed columns between the passes gives torchvision's pixels exactly, at a
    fraction of the memory: an independent reference for the 10000x2 case."""
    from pipeline.crops import center_crop_box, resized_size

    img = Image.fromarray(synthetic_rgb(2, 10000, seed=1))
    w2, h2 = resized_size(*img.size)
    left, top, right, _ = center_crop_box(w2, h2)
    strip = img.resize((w2, img.height), Image.BICUBIC).crop((left, 0, right, img.height))
    exact = np.asarray(strip.resize((224, h2), Image.BICUBIC))[top:top + 224]
    assert np.abs(crop_image(img).astype(int) - exact).max() <= 2


def test_source_over_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    from pipeline.limits import PixelBudgetError

    path = tmp_path / "big.png"
    Image.fromarray(synthetic_rgb(1200, 1000)).save(path)
    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or original(self))
    with pytest.raises(PixelBudgetError, match="1000x1200"):
        load_crop(path, budget=DecodeBudget(max_pixels=1_000_000))
    assert loads == []
    assert load_crop(path, budget=DecodeBudget(max_pixels=1_200_000)).shape == (224, 224, 3) and loads


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin, UnidentifiedImageError

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        RuntimeError("Ghostscript was started")))
    path = tmp_path / "photo.jpg"        # the name says JPEG; the content is PostScript
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 300 300\n%%EndComments\n"
                     b"newpath 0 0 moveto 300 300 lineto stroke\nshowpage\n%%EOF\n")
    with pytest.raises(UnidentifiedImageError):
        load_crop(path)
    assert calls == []
