"""tools/bpg against the genuine BPG 0.9.8 vectors in ../shared/bpg-vectors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_path, synthetic_rgb
import tools.bpg as bpg
from tools.bpg.bits import BitReader
from tools.bpg.paramsets import nal_type, split_annexb, unescape_nal

pytestmark = pytest.mark.shared


def _records():
    root = shared_path("bpg-vectors")
    return root, json.loads((root / "manifest.json").read_text())["records"]


def _png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def _slice_qp(data: bytes) -> int:
    """SliceQpY of the first slice: init_qp (26 here, PPS init_qp_minus26 = 0) + slice_qp_delta."""
    h = bpg.read_header(data)
    nal = next(n for n in split_annexb(b"\x00\x00\x01" + data[h.data_offset:]) if nal_type(n) < 32)
    r = BitReader(unescape_nal(nal))
    r.u(16)                      # NAL header
    r.u(1), r.u(1), r.ue()       # first_slice_segment_in_pic, no_output_of_prior_pics, pps id
    r.ue()                       # slice_type
    r.u(2)                       # slice_sao_luma_flag, slice_sao_chroma_flag (SAO on in all files)
    v = r.ue()
    return 26 + ((v + 1) // 2 if v % 2 else -(v // 2))


def test_decoder_reproduces_genuine_bpgdec():
    """Bit-exact: every pixel of all 29 vectors equals what the genuine bpgdec wrote."""
    root, records = _records()
    assert len(records) == 29
    mismatched = {}
    for r in records:
        ours = bpg.decode((root / r["bpg"]).read_bytes())
        ref = _png(root / r["decoded"])
        assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.uint8, r["bpg"]
        diff = np.abs(ours.astype(int) - ref)
        if diff.max() != 0 or not np.array_equal(ours, ref):
            mismatched[r["bpg"]] = (int(diff.max()), float((diff == 0).mean()))
    assert mismatched == {}


@pytest.fixture(scope="module")
def our_files():
    """Our encoding of every vector source at the vector's settings (module-cached)."""
    root, records = _records()
    out = {}
    for r in records:
        src = _png(root / r["source"])
        out[r["bpg"]] = (src, bpg.encode(src, q=r["q"], effort=r["m"], chroma=str(r["f"])))
    return out


@pytest.mark.slow
def test_our_headers_equal_genuine_headers_field_for_field(our_files):
    root, records = _records()
    for r in records:
        genuine = bpg.read_header((root / r["bpg"]).read_bytes()).fields()
        ours = bpg.read_header(our_files[r["bpg"]][1]).fields()
        assert ours == genuine, {k: (ours[k], genuine[k]) for k in genuine if ours[k] != genuine[k]}


@pytest.mark.slow
def test_slice_qp_matches_genuine(our_files):
    root, records = _records()
    for r in records:
        genuine = _slice_qp((root / r["bpg"]).read_bytes())
        assert genuine == r["q"] - 3  # bpg.md: x265's I/P factor lowers the I slice by 3
        assert _slice_qp(our_files[r["bpg"]][1]) == genuine, r["bpg"]


@pytest.mark.slow
def test_our_bytes_and_psnr_near_genuine(our_files):
    root, records = _records()
    ours_bytes, ours_psnr = [], []
    for r in records:
        src, data = our_files[r["bpg"]]
        dec = bpg.decode(data)                      # our decoder reads our files
        assert dec.shape == src.shape
        ours_bytes.append(len(data))
        ours_psnr.append(_psnr(src, dec))
    gen_bytes = np.mean([r["bytes"] for r in records])
    gen_psnr = np.mean([r["psnr_rgb"] for r in records])
    assert abs(np.mean(ours_bytes) / gen_bytes - 1) <= 0.12, (np.mean(ours_bytes), gen_bytes)
    assert abs(np.mean(ours_psnr) - gen_psnr) <= 0.5, (np.mean(ours_psnr), gen_psnr)


def test_genuine_psnr_recomputes_from_the_vectors():
    """Sanity check of the comparison itself: the manifest's PSNR is source vs .dec.png."""
    root, records = _records()
    r = records[0]
    assert _psnr(_png(root / r["source"]), _png(root / r["decoded"])) == pytest.approx(r["psnr_rgb"], abs=1e-3)


# -- fast round trips on generated images (no ../shared needed) ---------------------------

@pytest.mark.parametrize("h,w,chroma", [(48, 64, "420"), (149, 223, "420"), (33, 17, "444"),
                                        (13, 9, "gray"), (9, 70, "420"), (40, 40, "444")])
def test_round_trip_sizes_and_formats(h, w, chroma):
    rgb = synthetic_rgb(h, w, seed=h + w)
    data = bpg.encode(rgb, q=20, effort=3, chroma=chroma)
    hdr = bpg.read_header(data)
    assert (hdr.picture_width, hdr.picture_height) == (w, h)
    assert hdr.pixel_format == bpg.CHROMA_FORMATS[chroma]
    out = bpg.decode(data)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    ref = np.repeat(bpg.color.rgb_to_gray(rgb)[..., None], 3, 2) if chroma == "gray" else rgb
    if h * w >= 64:
        assert _psnr(ref, out) > 28


def test_too_small_for_x265_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 9x9"):
        bpg.encode(synthetic_rgb(8, 30), q=30, effort=3)


def test_quality_goes_with_q():
    rgb = synthetic_rgb(64, 64, seed=7)
    sizes = [len(bpg.encode(rgb, q=q, effort=3)) for q in (20, 35, 50)]
    assert sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize("kwargs,match", [({"q": 52}, "q"), ({"q": 4.5}, "q"), ({"effort": 0}, "effort"),
                                          ({"chroma": "422"}, "chroma")])
def test_bad_encoder_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bpg.encode(synthetic_rgb(8, 8), **kwargs)
