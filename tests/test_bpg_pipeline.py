"""The pipeline's BpgCodec adapter and the tools.bpg command line."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.codecs.base import CodecError
from pipeline.codecs.bpg import BpgCodec
from tests.conftest import synthetic_rgb
from tools.bpg.__main__ import main


def test_codec_round_trip_params_and_versions():
    codec = BpgCodec(41, effort=5)
    rgb = synthetic_rgb(40, 56, seed=1)
    data = codec.encode(rgb)
    assert BpgCodec.sniff(data) and data[:4] == b"BPG\xfb"
    assert codec.decode(data).shape == rgb.shape
    assert codec.params() == {"q": 41, "effort": 5, "chroma": "420", "encoder": "x265", "bit_depth": 8,
                              "color_space": "ycbcr", "x265_tuning": "cbqpoffs=2:crqpoffs=2"}
    versions = codec.versions()
    assert {"x265", "libavcodec", "pyav"} <= set(versions) and versions["x265_tuning"] == "cbqpoffs=2:crqpoffs=2"


@pytest.mark.parametrize("q,options", [(52, {}), (40.5, {}), ("inf", {}), (float("nan"), {}),
                                       (41, {"effort": 10}), (41, {"effort": 0}), (41, {"effort": "x"}),
                                       (41, {"effort": 8.5}), (41, {"chroma": "422"}), (41, {"speed": 1}),
                                       (41, {"encoder": "jctvc"})])
def test_codec_rejects_bad_settings(q, options):
    with pytest.raises(CodecError):
        BpgCodec(q, **options)


def test_codec_decode_errors_are_codec_errors():
    with pytest.raises(CodecError, match="BPG"):
        BpgCodec(41).decode(b"BPG\xfb\x20\x00")


def test_cli_enc_dec_info(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(synthetic_rgb(30, 45, seed=2)).save(src)
    runner = CliRunner()
    out = tmp_path / "out.bpg"
    r = runner.invoke(main, ["enc", str(src), "-o", str(out), "-q", "30", "-m", "3", "-f", "444"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["info", str(out)])
    assert r.exit_code == 0 and "picture_width: 45" in r.output and "pixel_format: 3" in r.output
    png = tmp_path / "dec.png"
    r = runner.invoke(main, ["dec", str(out), "-o", str(png)])
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(png)).shape == (30, 45, 3)
    r = runner.invoke(main, ["enc", str(src), "-b", "10"])
    assert r.exit_code != 0 and "-b 8" in r.output
    r = runner.invoke(main, ["dec", str(src)])
    assert r.exit_code != 0 and "not a BPG file" in r.output


# -- the command line on hostile or unusual input -------------

def test_cli_enc_scales_16_bit_gray_as_the_crops_do(tmp_path):
    from pipeline.crops import to_rgb
    ramp = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 65535 // (48 * 64 - 1)).astype(np.uint16)
    src = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(src)
    with Image.open(src) as img:
        assert img.mode in ("I;16", "I")
        expected = np.asarray(to_rgb(img))[..., 0].astype(int)
    assert expected.min() == 0 and expected.max() == 255
    out, png = tmp_path / "g.bpg", tmp_path / "g.png"
    runner = CliRunner()
    assert runner.invoke(main, ["enc", str(src), "-o", str(out), "-q", "5", "-m", "3"]).exit_code == 0
    from tools.bpg import read_header
    assert read_header(out.read_bytes()).pixel_format == 0     # gray input -> gray picture
    assert runner.invoke(main, ["dec", str(out), "-o", str(png)]).exit_code == 0
    got = np.asarray(Image.open(png))[..., 0].astype(int)
    assert np.abs(got - expected).max() <= 3 and abs(got.mean() - expected.mean()) < 0.5


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_text("this is not an image\n"), "cannot read the image"),
    (lambda p: Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(p, "PNG"), "at least 9x9"),
    (lambda p: p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n"), "cannot read the image"),
])
def test_cli_enc_bad_input_is_one_line_naming_the_file(tmp_path, make, match):
    src = tmp_path / "input.png"
    make(src)
    r = CliRunner().invoke(main, ["enc", str(src), "-o", str(tmp_path / "o.bpg")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert str(src) in r.output and match in r.output, r.output


def test_cli_dec_refuses_truncated_and_oversized_pictures(tmp_path):
    data = BpgCodec(30, effort=3).encode(synthetic_rgb(64, 80, seed=3))
    cut = tmp_path / "cut.bpg"
    cut.write_bytes(data[:len(data) // 2])
    r = CliRunner().invoke(main, ["dec", str(cut), "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 1 and "truncated" in r.output and str(cut) in r.output, r.output
    whole = tmp_path / "whole.bpg"
    whole.write_bytes(data)
    r = CliRunner().invoke(main, ["dec", str(whole), "-o", str(tmp_path / "o.png"), "--max-pixels", "5000"])
    assert r.exit_code == 1 and "80x64 = 5,120 pixels is over the pixel budget of 5,000" in r.output, r.output
    assert not (tmp_path / "o.png").exists()


def test_codec_checks_the_budget_before_decoding(monkeypatch):
    from pipeline.codecs.base import PictureTooLargeError
    from pipeline.limits import DecodeBudget
    data = BpgCodec(30, effort=3).encode(synthetic_rgb(64, 80, seed=3))
    import tools.bpg.hevc as hevc
    monkeypatch.setattr(hevc, "decode_annexb", lambda *a: pytest.fail("decoded despite the budget"))
    with pytest.raises(PictureTooLargeError, match="80x64"):
        BpgCodec(30).decode(data, DecodeBudget(max_pixels=5000))
