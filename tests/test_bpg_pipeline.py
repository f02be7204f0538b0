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
                              "color_space": "ycbcr"}
    assert {"x265", "libavcodec", "pyav"} <= set(codec.versions())


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
