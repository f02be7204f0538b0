"""Crafted bitstreams whose header is small and whose decode is not: every decoder reads
what decoding will cost (size, tiles, frames, components, scans) from the header and refuses
it above the decode budget before decoding; the budget is a value handed to the decoder, the
same in every command, never a process environment variable."""
from __future__ import annotations

import io
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.codecs import CodecError, PictureTooLargeError, decode_any, get, probe
from pipeline.limits import DecodeBudget
from tests.conftest import ROOT, synthetic_rgb


def j2k_codestream(width: int, height: int, tile_w: int, tile_h: int, components: int = 3) -> bytes:
    """SOC, SIZ, COD, QCD, EOC: a header and no tile data (OpenJPEG allocates the tiles' state
    when it reads the header)."""
    siz = struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, tile_w, tile_h, 0, 0, components)
    siz += b"\x07\x01\x01" * components
    cod = struct.pack(">BBHBBBBBB", 0, 0, 1, 0, 0, 4, 4, 0, 1)
    return (b"\xff\x4f\xff\x51" + struct.pack(">H", 2 + len(siz)) + siz
            + b"\xff\x52" + struct.pack(">H", 2 + len(cod)) + cod
            + b"\xff\x5c\x00\x04\x40\x48" + b"\xff\xd9")


def jp2(codestream: bytes) -> bytes:
    def box(kind, payload):
        return struct.pack(">I", 8 + len(payload)) + kind + payload
    ihdr = box(b"ihdr", struct.pack(">IIHBBBB", 256, 255, 3, 7, 7, 0, 0))
    return (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ")
            + box(b"jp2h", ihdr + box(b"colr", b"\x01\x00\x00\x00\x00\x00\x10")) + box(b"jp2c", codestream))


# --------------------------------------------------------------------------- JPEG 2000 tiles

def test_a_j2k_codestream_of_one_pixel_tiles_is_refused_from_its_header():
    data = j2k_codestream(255, 256, 1, 1)          # 65,280 tiles in 73 bytes
    assert len(data) < 100
    for read in (decode_any, probe, get("j2k")(200).decode):
        with pytest.raises(PictureTooLargeError, match="65,280 tiles is over the decode budget of 1,024 tiles"):
            read(data)
    with pytest.raises(PictureTooLargeError, match="65,280 tiles"):
        decode_any(jp2(data))                       # the same codestream in a JP2 file


_COST_CHILD = r"""
import resource, sys, time
from pipeline.codecs import CodecError, decode_any
data = bytes.fromhex(sys.stdin.read())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_any(data)
except CodecError as exc:
    print(type(exc).__name__, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_the_one_pixel_tiles_cost_no_memory():
    """Peak RSS of a fresh process around the decode: OpenJPEG took 630 MB for these 73 bytes."""
    proc = subprocess.run([sys.executable, "-c", _COST_CHILD], input=j2k_codestream(255, 256, 1, 1).hex(),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    kind, grew_kb = proc.stdout.split()
    assert kind == "PictureTooLargeError" and int(grew_kb) < 50_000, proc.stdout + proc.stderr


def test_tiles_within_the_budget_decode_and_the_bound_is_the_budgets():
    codec = get("j2k")(200)
    tiled = j2k_codestream(64, 64, 8, 8)            # 64 tiles: header only, so undecodable, not refused
    with pytest.raises(CodecError, match="undecodable"):
        codec.decode(tiled)
    with pytest.raises(PictureTooLargeError, match="64 tiles is over the decode budget of 10 tiles"):
        codec.decode(tiled, DecodeBudget(max_tiles=10))


def test_a_j2k_of_many_components_is_refused():
    with pytest.raises(PictureTooLargeError, match="5 components is over the decode budget of 4"):
        decode_any(j2k_codestream(64, 64, 64, 64, components=5))


# --------------------------------------------------------------------------- BPG parameter sets

def _bpg_with_payload_sps(side: int, claimed: int = 64, vps: bool = False) -> bytes:
    """A BPG file whose header says claimed x claimed and whose picture data carries its own
    SPS of side x side (with the picture coded at that size): PPS, [VPS], SPS, PPS, slice."""
    from tools.bpg import _START, encode, read_header
    from tools.bpg.container import BpgHeader
    from tools.bpg.paramsets import build_sps, build_vps, split_annexb

    data = encode(np.full((side, side, 3), 128, np.uint8), q=40, effort=1)
    h = read_header(data)
    nals = split_annexb(_START + data[h.data_offset:])
    sps = build_sps(h.hevc_header, h.chroma_format_idc, side, side, 0)
    header = BpgHeader(pixel_format=h.pixel_format, picture_width=claimed, picture_height=claimed,
                       hevc_header=h.hevc_header).encode()
    return header + _START.join([nals[0]] + ([build_vps()] if vps else []) + [sps, nals[0]] + nals[1:])


@pytest.mark.parametrize("vps", [False, True])
def test_a_bpg_whose_picture_data_replaces_the_headers_sps_is_refused(vps):
    """The header says 64x64 (within a budget of 10,000 pixels); its SPS says 512x512, which
    the HEVC decoder would decode (262,144 pixels) before the crop to 64x64."""
    import tools.bpg as bpg
    data = _bpg_with_payload_sps(512, vps=vps)
    budget = DecodeBudget(max_pixels=10_000)
    for decode in (lambda d: bpg.decode(d, budget), lambda d: decode_any(d, budget), lambda d: probe(d, budget)):
        with pytest.raises(ValueError, match="(VPS|SPS) NAL unit; the parameter sets are the header's"):
            decode(data)


def test_a_bpg_holding_two_pictures_is_refused():
    from tools.bpg import _START, encode, read_header
    from tools.bpg.paramsets import split_annexb
    data = encode(synthetic_rgb(64, 64, seed=2), q=30, effort=1)
    h = read_header(data)
    nals = split_annexb(_START + data[h.data_offset:])
    two = data[:h.data_offset] + _START.join(nals + nals[1:])
    with pytest.raises(CodecError, match="more than one picture"):
        decode_any(two)
    assert decode_any(data).shape == (64, 64, 3)


# --------------------------------------------------------------------------- frames

def _animation(fmt: str, frames: int = 3) -> bytes:
    pictures = [Image.fromarray(np.full((32, 48, 3), 40 * i, np.uint8)) for i in range(frames)]
    buf = io.BytesIO()
    pictures[0].save(buf, fmt, save_all=True, append_images=pictures[1:], **({"lossless": True} if fmt == "WEBP"
                                                                              else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "AVIF"])
def test_an_animation_is_refused_by_its_frame_count(fmt):
    from PIL import features
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    data = _animation(fmt)
    with pytest.raises(PictureTooLargeError, match="3 frames is over the decode budget of 1 frames"):
        decode_any(data)
    assert decode_any(data, DecodeBudget(max_frames=3)).shape == (32, 48, 3)   # the first frame


def test_a_cameras_multi_picture_jpeg_is_one_picture():
    """MPO (a preview, a depth or gain map after the photo): the photo is decoded, not refused."""
    photo = Image.fromarray(synthetic_rgb(32, 48, seed=3))
    buf = io.BytesIO()
    photo.save(buf, "MPO", save_all=True, append_images=[Image.fromarray(np.full((16, 16, 3), 200, np.uint8))])
    assert decode_any(buf.getvalue()).shape == (32, 48, 3)


def test_a_jxl_animation_is_refused_without_decoding_its_frames():
    """imagecodecs decoded every frame into one array (3 x H x W x 3), which the codec then
    returned as a picture; a 200-frame 1024² file took 682 MB."""
    imagecodecs = pytest.importorskip("imagecodecs")
    frames = np.stack([np.full((64, 64, 3), 40 * i, np.uint8) for i in range(3)])
    data = bytes(imagecodecs.jpegxl_encode(frames, level=50))
    for read in (decode_any, probe):
        with pytest.raises(PictureTooLargeError, match="an animation whose frame count no header gives"):
            read(data)


# --------------------------------------------------------------------------- JPEG scans

def _progressive_jpeg(scans_added: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_rgb(32, 32, seed=4)).save(buf, "JPEG", quality=80, progressive=True)
    data = buf.getvalue()
    last = data[data.rindex(b"\xff\xda"):data.rindex(b"\xff\xd9")]
    return data[:data.rindex(b"\xff\xd9")] + last * scans_added + b"\xff\xd9"


def test_a_progressive_jpeg_of_thousands_of_scans_is_refused():
    """Each scan is a pass over every coefficient: a few bytes of scan, a whole picture of work."""
    data = _progressive_jpeg(2000)
    with pytest.raises(PictureTooLargeError, match="scans is over the decode budget of 128 scans"):
        decode_any(data)
    assert decode_any(_progressive_jpeg(0)).shape == (32, 32, 3)     # libjpeg's 10 scans


# --------------------------------------------------------------------------- AVIF items

def test_an_avif_of_too_many_items_is_refused():
    from PIL import features
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    buf = io.BytesIO()
    Image.fromarray(synthetic_rgb(32, 32, seed=6)).save(buf, "AVIF", quality=50)
    data = bytearray(buf.getvalue())
    i = data.index(b"iinf")
    version = data[i + 4]
    count_at = i + 8
    if version == 0:
        data[count_at:count_at + 2] = (5000).to_bytes(2, "big")
    else:
        data[count_at:count_at + 4] = (5000).to_bytes(4, "big")
    with pytest.raises(PictureTooLargeError, match="5,000 tiles is over the decode budget of 1,024 tiles"):
        decode_any(bytes(data))


# --------------------------------------------------------------------------- one budget, passed down

def test_the_budget_is_a_value_not_the_environment(monkeypatch):
    """M2M_MAX_PIXELS is the commands' default (read by --max-pixels), never a decoder's."""
    buf = io.BytesIO()
    Image.fromarray(synthetic_rgb(224, 224, seed=1)).save(buf, "PNG")
    monkeypatch.setenv("M2M_MAX_PIXELS", "100")
    assert decode_any(buf.getvalue()).shape == (224, 224, 3)
    with pytest.raises(PictureTooLargeError, match="over the pixel budget of 100"):
        decode_any(buf.getvalue(), DecodeBudget(max_pixels=100))


def test_loader_decodes_do_not_touch_the_environment(monkeypatch):
    """The loader's exact-size check hands its decoder a budget of the crop's size; it swapped
    M2M_MAX_PIXELS per sample (a process-wide variable, racing with threads)."""
    import os

    from trainer.data.completeness import decode_sized
    seen = []
    monkeypatch.setattr(os, "environ", _Watch(os.environ, seen))
    buf = io.BytesIO()
    Image.fromarray(synthetic_rgb(64, 64, seed=1)).save(buf, "PNG")
    with pytest.raises(ValueError, match="a 64x64 picture, not the manifest's 32x32"):
        decode_sized(decode_any, buf.getvalue(), (32, 32))
    assert decode_sized(decode_any, buf.getvalue(), (64, 64)).shape == (64, 64, 3)
    assert seen == []


class _Watch(dict):
    def __init__(self, env, seen):
        super().__init__(env)
        self.seen = seen

    def __setitem__(self, key, value):
        self.seen.append(key)
        super().__setitem__(key, value)

    def pop(self, key, *default):
        self.seen.append(key)
        return super().pop(key, *default)


@pytest.mark.parametrize("command", ["pipeline", "predict", "serve", "bpg"])
def test_every_command_declares_max_pixels_the_same_way(command):
    import click

    from pipeline.__main__ import cli as pipeline_cli
    from tools.bpg.__main__ import main as bpg_cli
    from receiver.predict import cli as predict_cli
    from receiver.serve import cli as serve_cli
    cmd = {"pipeline": pipeline_cli.commands["shards"], "predict": predict_cli, "serve": serve_cli,
           "bpg": bpg_cli.commands["dec"]}[command]
    opt = next(p for p in cmd.params if "--max-pixels" in getattr(p, "opts", ()))
    assert opt.envvar == "M2M_MAX_PIXELS" and opt.name == "budget" and isinstance(opt.type, click.IntRange)
    ctx = click.Context(cmd)
    assert opt.process_value(ctx, 1234) == DecodeBudget(max_pixels=1234)
