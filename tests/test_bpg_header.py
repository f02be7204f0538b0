"""BPG container: ue7, exp-Golomb, header fields against the genuine 0.9.8 files."""
from __future__ import annotations

import json

import pytest

from tests.conftest import shared_path
from tools.bpg.bits import BitReader, BitWriter
from tools.bpg.container import BpgHeader, parse_header, read_ue7, write_ue7
from tools.bpg.errors import BpgError
from tools.bpg.paramsets import HevcHeader, build_vps, escape_rbsp, unescape_nal


def _records():
    root = shared_path("bpg-vectors")
    return root, json.loads((root / "manifest.json").read_text())["records"]


@pytest.mark.parametrize("value,encoded", [(0, b"\x00"), (127, b"\x7f"), (128, b"\x81\x00"),
                                           (224, b"\x81\x60"), (2**32 - 1, b"\x8f\xff\xff\xff\x7f")])
def test_ue7_known_values(value, encoded):
    assert write_ue7(value) == encoded  # 224 -> 81 60 is the spec's own example
    assert read_ue7(encoded, 0, "x") == (value, len(encoded))


def test_ue7_rejects_overlong_and_truncated():
    with pytest.raises(BpgError, match="picture_width"):
        read_ue7(b"\x81", 0, "picture_width")
    with pytest.raises(BpgError, match="redundant"):
        read_ue7(b"\x80\x01", 0, "picture_width")
    with pytest.raises(BpgError, match="32 bits"):
        read_ue7(b"\xff\xff\xff\xff\xff\x01", 0, "picture_width")


def test_exp_golomb_round_trip():
    values = [0, 1, 2, 3, 7, 8, 255, 1000, 2**20]
    w = BitWriter()
    for v in values:
        w.ue(v)
        w.u(3, v % 8)
    r = BitReader(w.to_bytes())
    assert [(r.ue(), r.u(3)) for _ in values] == [(v, v % 8) for v in values]
    # ue(v) bit patterns from H.265 9.2: 0 -> 1, 1 -> 010, 3 -> 00100
    w = BitWriter()
    for v in (0, 1, 3):
        w.ue(v)
    assert w.to_bytes() == bytes([0b10100010, 0b00000000])  # 1 010 00100, padded


def test_emulation_prevention_round_trip():
    raw = b"\x00\x00\x00\x00\x01\x00\x00\x02\x00\x00\x03\xff"
    esc = escape_rbsp(raw)
    assert b"\x00\x00\x00" not in esc and b"\x00\x00\x01" not in esc and b"\x00\x00\x02" not in esc
    assert unescape_nal(esc) == raw


@pytest.mark.shared
def test_genuine_headers_parse_to_the_manifest():
    root, records = _records()
    for r in records:
        data = (root / r["bpg"]).read_bytes()
        h = parse_header(data)
        assert (h.picture_width, h.picture_height) == (r["width"], r["height"]), r["bpg"]
        assert h.pixel_format == {420: 1, 444: 3}[r["f"]], r["bpg"]
        assert (h.bit_depth_minus_8, h.color_space, h.picture_data_length) == (0, 0, 0)
        # the hevc data starts with the PPS NAL whose start code was removed
        assert data[h.data_offset:h.data_offset + 2] == b"\x44\x01", r["bpg"]


@pytest.mark.shared
def test_header_writer_reproduces_genuine_bytes():
    """Parsing then re-writing a genuine header gives the same bytes, field for field."""
    root, records = _records()
    for r in records:
        data = (root / r["bpg"]).read_bytes()
        h = parse_header(data)
        assert h.encode() == data[:h.data_offset], r["bpg"]


def test_hevc_header_round_trip_with_pcm_and_extensions():
    hh = HevcHeader(pcm_enabled_flag=1, pcm_sample_bit_depth_luma_minus1=7,
                    pcm_sample_bit_depth_chroma_minus1=7, log2_min_pcm_luma_coding_block_size_minus3=0,
                    log2_diff_max_min_pcm_luma_coding_block_size=2, pcm_loop_filter_disabled_flag=1,
                    sps_extension_present_flag=1, sps_range_extension_flag=1,
                    sps_range_extension_flags=0b101000001)
    data = BpgHeader(picture_width=10, picture_height=7, hevc_header=hh).encode()
    assert parse_header(data + b"\x44\x01").hevc_header == hh


def _genuine():
    root, records = _records()
    return bytearray((root / records[0]["bpg"]).read_bytes())


@pytest.mark.shared
@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.__setitem__(0, 0x41), "magic"),
    (lambda d: d.__setitem__(4, d[4] | 0x10), "alpha1_flag"),
    (lambda d: d.__setitem__(5, d[5] | 0x01), "animation_flag"),
    (lambda d: d.__setitem__(5, d[5] | 0x04), "alpha2_flag"),
    (lambda d: d.__setitem__(4, (d[4] & 0xF0) | 2), "bit_depth_minus_8"),
    (lambda d: d.__setitem__(4, (d[4] & 0x1F) | (7 << 5)), "pixel_format"),
    (lambda d: d.__setitem__(5, 0x10), "color_space"),
    (lambda d: d.__setitem__(slice(6, 8), b"\x00"), "picture_width"),
])
def test_bad_headers_name_the_field(mutate, field):
    data = _genuine()
    mutate(data)
    with pytest.raises(BpgError, match=field):
        parse_header(bytes(data))


@pytest.mark.shared
def test_truncated_headers_are_clean_errors():
    data = bytes(_genuine())
    h = parse_header(data)
    for n in range(h.data_offset):
        with pytest.raises(BpgError, match="truncated|not a BPG"):
            parse_header(data[:n])


@pytest.mark.shared
def test_rebuilt_parameter_sets_are_well_formed():
    h = parse_header(bytes(_genuine()))
    vps, sps = build_vps(), h.sps()
    assert (vps[0] >> 1) & 0x3F == 32 and (sps[0] >> 1) & 0x3F == 33
    assert b"\x00\x00\x01" not in vps + sps and vps[-1] != 0 and sps[-1] != 0


def _escape_reference(rbsp: bytes) -> bytes:
    """H.265 7.4.2: after two zero bytes, a byte <= 3 gets an emulation_prevention_three_byte."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def test_emulation_prevention_matches_the_byte_loop():
    import numpy as np
    rng = np.random.default_rng(7)
    for n in range(300):
        raw = bytes(rng.choice([0, 0, 0, 1, 2, 3, 4, 255], size=int(rng.integers(0, 40))).astype(np.uint8))
        assert escape_rbsp(raw) == _escape_reference(raw), raw.hex()
        assert unescape_nal(escape_rbsp(raw)) == raw


@pytest.mark.shared
def test_one_sps_routine_reads_what_it_writes_in_both_forms():
    """The compact hevc_header and the full SPS go through the same field routine: a header
    rebuilt into an SPS and parsed back gives the same fields, for every genuine header."""
    from tools.bpg.paramsets import parse_sps
    root, records = _records()
    headers = [parse_header((root / r["bpg"]).read_bytes()) for r in records]
    headers.append(parse_header(BpgHeader(picture_width=10, picture_height=7, hevc_header=HevcHeader(
        pcm_enabled_flag=1, pcm_sample_bit_depth_luma_minus1=7, log2_diff_max_min_pcm_luma_coding_block_size=2,
        sps_extension_present_flag=1, sps_range_extension_flag=1, sps_range_extension_flags=0b100000001)).encode()
        + b"\x44\x01"))
    for h in headers:
        sps = parse_sps(h.sps())
        assert sps.hevc_header == h.hevc_header
        assert (sps.chroma_format_idc, sps.amp_enabled_flag, sps.scaling_list_enabled_flag) == (h.chroma_format_idc, 1, 0)
        cb = h.hevc_header.min_cb_size
        assert (sps.pic_width, sps.pic_height) == (-(-h.picture_width // cb) * cb, -(-h.picture_height // cb) * cb)
