"""``-o encoder=bpgenc``: the genuine reference encoder when the user has it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.codecs import CodecError, create
from tests.conftest import make_image_folder, shared_path


def _bpgenc() -> str:
    return str(shared_path("bpg-genuine", "bpgenc"))


@pytest.mark.shared
def test_bpgenc_option_reproduces_the_genuine_vectors_byte_for_byte():
    root = shared_path("bpg-vectors")
    records = json.loads((root / "manifest.json").read_text())["records"]
    for r in records[::4]:
        codec = create("bpg", r["q"], effort=r["m"], chroma=str(r["f"]), bpgenc=_bpgenc())
        assert codec.options["encoder"] == "bpgenc"
        src = np.asarray(Image.open(root / r["source"]).convert("RGB"))
        data = codec.encode(src)
        assert data == (root / r["bpg"]).read_bytes(), r["bpg"]
        np.testing.assert_array_equal(codec.decode(data), np.asarray(Image.open(root / r["decoded"]).convert("RGB")))
    v = codec.versions()
    assert v["bpgenc"] == "0.9.8" and len(v["bpgenc_sha256"]) == 16


@pytest.mark.shared
def test_bpgenc_found_on_path(monkeypatch):
    monkeypatch.setenv("PATH", str(shared_path("bpg-genuine")))
    codec = create("bpg", 46, encoder="bpgenc")
    rgb = np.asarray(Image.open(shared_path("bpg-vectors", "coffee_223x149.png")).convert("RGB"))
    assert codec.decode(codec.encode(rgb)).shape == rgb.shape
    gray = create("bpg", 46, encoder="bpgenc", chroma="gray").encode(rgb)
    from tools.bpg import read_header
    assert read_header(gray).pixel_format == 0


@pytest.mark.shared
def test_manifest_records_the_reference_tools_version(tmp_path):
    from pipeline.build import build_setting
    src = make_image_folder(tmp_path / "src", per_class=1)
    m = build_setting(src.parent, "train", "bpg", 41, tmp_path / "out", shard_size=4, jobs=1,
                      codec_options={"bpgenc": _bpgenc(), "effort": "3"}, progress=False)
    assert m["count"] == 2 and not m["failed"]
    assert m["versions"]["bpgenc"] == "0.9.8" and m["codec_params"]["encoder"] == "bpgenc"
    assert "bpgenc" not in m["codec_params"]       # the path is not a bitstream parameter


def test_missing_reference_tool_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CodecError, match="bpgenc is not on PATH.*-o bpgenc="):
        create("bpg", 41, encoder="bpgenc")
    with pytest.raises(CodecError, match=r"bpgenc not found or not executable: /nonexistent/bpgenc"):
        create("bpg", 41, bpgenc="/nonexistent/bpgenc")
    (tmp_path / "fake").mkdir()
    fake = tmp_path / "fake" / "bpgenc"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(CodecError, match="does not look like a BPG tool"):
        create("bpg", 41, bpgenc=str(fake))
    from click.testing import CliRunner

    from pipeline.__main__ import cli
    make_image_folder(tmp_path / "src", per_class=1)
    r = CliRunner().invoke(cli, ["shards", "--codec", "bpg", "--q", "41", "--src", str(tmp_path / "src"),
                                 "--split", "train", "--out", str(tmp_path / "out"), "-o", "encoder=bpgenc"])
    assert r.exit_code == 1 and "bpgenc is not on PATH" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.shared
def test_genuine_bpgdec_reads_our_files_pixel_for_pixel(tmp_path):
    """Interoperability the other way: the reference decoder decodes what our encoder writes
    (with its x265 tuning) to exactly the pixels our decoder gives."""
    import subprocess
    import tools.bpg as bpg
    from tests.conftest import synthetic_rgb
    bpgdec = shared_path("bpg-genuine", "bpgdec")
    root = shared_path("bpg-vectors")
    images = [np.asarray(Image.open(root / "astronaut.png").convert("RGB")),
              np.asarray(Image.open(root / "coffee_223x149.png").convert("RGB")), synthetic_rgb(40, 56)]
    for i, (img, chroma) in enumerate(zip(images, ("420", "444", "420"))):
        data = bpg.encode(img, q=41, effort=9, chroma=chroma)
        src, out = tmp_path / f"{i}.bpg", tmp_path / f"{i}.png"
        src.write_bytes(data)
        subprocess.run([str(bpgdec), "-o", str(out), str(src)], check=True, capture_output=True, timeout=60)
        np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), bpg.decode(data))
