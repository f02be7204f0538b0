"""The BPG container: file header, the compact ``hevc_header`` and the VPS/SPS it stands for.

Everything here is plain bit manipulation (no PyAV), so it can be tested and fuzzed alone.
Field names follow the BPG spec and H.265 section 7.3 so they can be checked side by side.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

MAGIC = b"BPG\xfb"

# pixel_format values (BPG spec); siting only changes chroma re-sampling, not the HEVC stream
FORMAT_GRAY, FORMAT_420, FORMAT_422, FORMAT_444, FORMAT_420_MPEG2, FORMAT_422_MPEG2 = range(6)
CHROMA_FORMAT_IDC = {FORMAT_GRAY: 0, FORMAT_420: 1, FORMAT_422: 2, FORMAT_444: 3,
                     FORMAT_420_MPEG2: 1, FORMAT_422_MPEG2: 2}
COLOR_SPACES = ("ycbcr", "rgb", "ycgco", "ycbcr_bt709", "ycbcr_bt2020")

# HEVC NAL unit types that matter here
NAL_VPS, NAL_SPS, NAL_PPS = 32, 33, 34

# a 1-pixel image already needs a few bytes; anything beyond this is a corrupt size field
MAX_DIMENSION = 1 << 16


class BpgError(ValueError):
    """Malformed, truncated or unsupported BPG data (the message names the field)."""


# --------------------------------------------------------------------------- ue7

def read_ue7(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """BPG's 7-bit-group integer at ``pos``; returns (value, next position)."""
    value = 0
    for i in range(5):  # 5 groups cover 32 bits; longer means corrupt data
        if pos >= len(data):
            raise BpgError(f"truncated BPG header: {what} runs past the end of the data ({len(data)} bytes)")
        byte = data[pos]
        pos += 1
        if i == 0 and byte == 0x80:
            raise BpgError(f"invalid BPG header: {what} has a redundant leading zero group")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if value >= 1 << 32:
                break
            return value, pos
    raise BpgError(f"invalid BPG header: {what} is longer than 32 bits")


def write_ue7(value: int) -> bytes:
    if not 0 <= value < 1 << 32:
        raise ValueError(f"ue7 value out of range: {value}")
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


# --------------------------------------------------------------------------- bits

class BitReader:
    """MSB-first reader with HEVC's exp-Golomb codes; running off the end is a BpgError."""

    def __init__(self, data: bytes, what: str = "bitstream"):
        self.data = data
        self.pos = 0
        self.what = what

    def u(self, n: int, name: str = "field") -> int:
        if self.pos + n > 8 * len(self.data):
            raise BpgError(f"truncated {self.what}: {name} runs past the end ({len(self.data)} bytes)")
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self, name: str = "field") -> int:
        zeros = 0
        while self.u(1, name) == 0:
            zeros += 1
            if zeros > 31:
                raise BpgError(f"invalid {self.what}: exp-Golomb code of {name} is longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros, name)

    def byte_aligned_pos(self) -> int:
        return (self.pos + 7) >> 3


class BitWriter:
    def __init__(self):
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        if not 0 <= value < 1 << n:
            raise ValueError(f"value {value} does not fit in {n} bits")
        self.bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def trailing_bits(self) -> None:
        """rbsp_trailing_bits: a one, then zeros to the byte boundary."""
        self.bits.append(1)
        self.zero_pad()

    def zero_pad(self) -> None:
        self.bits.extend([0] * (-len(self.bits) % 8))

    def to_bytes(self) -> bytes:
        self.zero_pad()
        return bytes(int("".join(map(str, self.bits[i:i + 8])), 2) for i in range(0, len(self.bits), 8))


# ----------------------------------------------------------------------- headers

@dataclass
class HevcHeader:
    """The SPS fields BPG keeps (everything else in the SPS is fixed by the format)."""
    log2_min_luma_coding_block_size_minus3: int = 0
    log2_diff_max_min_luma_coding_block_size: int = 3
    log2_min_transform_block_size_minus2: int = 0
    log2_diff_max_min_transform_block_size: int = 3
    max_transform_hierarchy_depth_intra: int = 3
    sample_adaptive_offset_enabled_flag: int = 1
    pcm_enabled_flag: int = 0
    pcm_sample_bit_depth_luma_minus1: int = 0
    pcm_sample_bit_depth_chroma_minus1: int = 0
    log2_min_pcm_luma_coding_block_size_minus3: int = 0
    log2_diff_max_min_pcm_luma_coding_block_size: int = 0
    pcm_loop_filter_disabled_flag: int = 0
    strong_intra_smoothing_enabled_flag: int = 1
    sps_extension_present_flag: int = 0
    sps_range_extension_flag: int = 0
    sps_extension_7bits: int = 0
    #: the 9 range-extension flags, first flag (transform_skip_rotation) in the top bit
    sps_range_extension_flags: int = 0

    @property
    def min_cb_size(self) -> int:
        return 1 << (self.log2_min_luma_coding_block_size_minus3 + 3)

    def to_bits(self, w: BitWriter) -> None:
        w.ue(self.log2_min_luma_coding_block_size_minus3)
        w.ue(self.log2_diff_max_min_luma_coding_block_size)
        w.ue(self.log2_min_transform_block_size_minus2)
        w.ue(self.log2_diff_max_min_transform_block_size)
        w.ue(self.max_transform_hierarchy_depth_intra)
        w.u(1, self.sample_adaptive_offset_enabled_flag)
        w.u(1, self.pcm_enabled_flag)
        if self.pcm_enabled_flag:
            self._pcm_bits(w)
        w.u(1, self.strong_intra_smoothing_enabled_flag)
        w.u(1, self.sps_extension_present_flag)
        if self.sps_extension_present_flag:
            w.u(1, self.sps_range_extension_flag)
            w.u(7, self.sps_extension_7bits)
            if self.sps_range_extension_flag:
                w.u(9, self.sps_range_extension_flags)

    def _pcm_bits(self, w: BitWriter) -> None:
        w.u(4, self.pcm_sample_bit_depth_luma_minus1)
        w.u(4, self.pcm_sample_bit_depth_chroma_minus1)
        w.ue(self.log2_min_pcm_luma_coding_block_size_minus3)
        w.ue(self.log2_diff_max_min_pcm_luma_coding_block_size)
        w.u(1, self.pcm_loop_filter_disabled_flag)

    def encode(self) -> bytes:
        """hevc_header as stored in the file: ue7 length, then the bits padded to a byte."""
        w = BitWriter()
        self.to_bits(w)
        body = w.to_bytes()
        return write_ue7(len(body)) + body

    @classmethod
    def from_bits(cls, r: BitReader) -> "HevcHeader":
        h = cls()
        h.log2_min_luma_coding_block_size_minus3 = r.ue("log2_min_luma_coding_block_size_minus3")
        h.log2_diff_max_min_luma_coding_block_size = r.ue("log2_diff_max_min_luma_coding_block_size")
        h.log2_min_transform_block_size_minus2 = r.ue("log2_min_transform_block_size_minus2")
        h.log2_diff_max_min_transform_block_size = r.ue("log2_diff_max_min_transform_block_size")
        h.max_transform_hierarchy_depth_intra = r.ue("max_transform_hierarchy_depth_intra")
        h.sample_adaptive_offset_enabled_flag = r.u(1, "sample_adaptive_offset_enabled_flag")
        h.pcm_enabled_flag = r.u(1, "pcm_enabled_flag")
        if h.pcm_enabled_flag:
            h.pcm_sample_bit_depth_luma_minus1 = r.u(4, "pcm_sample_bit_depth_luma_minus1")
            h.pcm_sample_bit_depth_chroma_minus1 = r.u(4, "pcm_sample_bit_depth_chroma_minus1")
            h.log2_min_pcm_luma_coding_block_size_minus3 = r.ue("log2_min_pcm_luma_coding_block_size_minus3")
            h.log2_diff_max_min_pcm_luma_coding_block_size = r.ue("log2_diff_max_min_pcm_luma_coding_block_size")
            h.pcm_loop_filter_disabled_flag = r.u(1, "pcm_loop_filter_disabled_flag")
        h.strong_intra_smoothing_enabled_flag = r.u(1, "strong_intra_smoothing_enabled_flag")
        h.sps_extension_present_flag = r.u(1, "sps_extension_present_flag")
        if h.sps_extension_present_flag:
            h.sps_range_extension_flag = r.u(1, "sps_range_extension_flag")
            h.sps_extension_7bits = r.u(7, "sps_extension_7bits")
            if h.sps_range_extension_flag:
                h.sps_range_extension_flags = r.u(9, "sps_range_extension_flags")
        h.validate()
        return h

    def validate(self) -> None:
        """Reject values that would make the rebuilt SPS invalid (HEVC's own limits)."""
        min_cb = self.log2_min_luma_coding_block_size_minus3 + 3
        ctb = min_cb + self.log2_diff_max_min_luma_coding_block_size
        min_tb = self.log2_min_transform_block_size_minus2 + 2
        max_tb = min_tb + self.log2_diff_max_min_transform_block_size
        checks = [
            (ctb <= 6, "log2_diff_max_min_luma_coding_block_size", "coding tree block larger than 64"),
            (max_tb <= 5, "log2_diff_max_min_transform_block_size", "transform block larger than 32"),
            (min_tb < min_cb, "log2_min_transform_block_size_minus2", "min transform not below min CB size"),
            (max_tb <= ctb, "log2_diff_max_min_transform_block_size", "max transform above CTB size"),
            (self.max_transform_hierarchy_depth_intra <= ctb - min_tb,
             "max_transform_hierarchy_depth_intra", "deeper than CTB/min transform allow"),
            (self.sps_extension_7bits == 0, "sps_extension_7bits", "unknown SPS extensions"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise BpgError(f"unsupported BPG hevc_header: {name} ({why})")


@dataclass
class BpgHeader:
    pixel_format: int = FORMAT_420
    alpha1_flag: int = 0
    bit_depth_minus_8: int = 0
    color_space: int = 0
    extension_present_flag: int = 0
    alpha2_flag: int = 0
    limited_range_flag: int = 0
    animation_flag: int = 0
    picture_width: int = 0
    picture_height: int = 0
    picture_data_length: int = 0
    extension_data_length: int = 0
    #: (tag, payload) of each extension, in file order
    extensions: list = field(default_factory=list)
    hevc_header: HevcHeader = field(default_factory=HevcHeader)
    #: byte offsets of hevc_header_length and of the HEVC NAL data (not stored fields)
    hevc_header_start: int = 0
    data_offset: int = 0

    def fields(self) -> dict:
        """All stored fields, hevc_header ones prefixed ``hevc.`` (for comparisons)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("hevc_header", "hevc_header_start", "data_offset")}
        out.update({f"hevc.{f.name}": getattr(self.hevc_header, f.name) for f in fields(HevcHeader)})
        return out

    def encode(self) -> bytes:
        if self.alpha1_flag or self.alpha2_flag or self.animation_flag or self.extension_present_flag:
            raise ValueError("writing alpha, animation or extensions is not supported")
        out = bytearray(MAGIC)
        out.append((self.pixel_format << 5) | (self.alpha1_flag << 4) | self.bit_depth_minus_8)
        out.append((self.color_space << 4) | (self.extension_present_flag << 3) | (self.alpha2_flag << 2)
                   | (self.limited_range_flag << 1) | self.animation_flag)
        out += write_ue7(self.picture_width) + write_ue7(self.picture_height)
        out += write_ue7(self.picture_data_length)
        out += self.hevc_header.encode()
        return bytes(out)


def parse_header(data: bytes) -> BpgHeader:
    """Parse and check a BPG file header; rejects what this decoder cannot render."""
    data = bytes(data)
    if len(data) < 6:
        raise BpgError(f"truncated BPG file: {len(data)} bytes, the fixed header alone is 6")
    if data[:4] != MAGIC:
        raise BpgError(f"not a BPG file: magic is {data[:4].hex(' ')}, expected {MAGIC.hex(' ')}")
    h = BpgHeader()
    h.pixel_format, h.alpha1_flag, h.bit_depth_minus_8 = data[4] >> 5, (data[4] >> 4) & 1, data[4] & 15
    b = data[5]
    h.color_space, h.extension_present_flag = b >> 4, (b >> 3) & 1
    h.alpha2_flag, h.limited_range_flag, h.animation_flag = (b >> 2) & 1, (b >> 1) & 1, b & 1
    if h.pixel_format > FORMAT_422_MPEG2:
        raise BpgError(f"invalid BPG header: pixel_format {h.pixel_format} (0..5 are defined)")
    if h.color_space >= len(COLOR_SPACES):
        raise BpgError(f"invalid BPG header: color_space {h.color_space} (0..4 are defined)")
    pos = 6
    h.picture_width, pos = read_ue7(data, pos, "picture_width")
    h.picture_height, pos = read_ue7(data, pos, "picture_height")
    for name in ("picture_width", "picture_height"):
        v = getattr(h, name)
        if not 0 < v <= MAX_DIMENSION:
            raise BpgError(f"invalid BPG header: {name} {v} (1..{MAX_DIMENSION} supported)")
    h.picture_data_length, pos = read_ue7(data, pos, "picture_data_length")
    if h.extension_present_flag:
        h.extension_data_length, pos = read_ue7(data, pos, "extension_data_length")
        end = pos + h.extension_data_length
        if end > len(data):
            raise BpgError(f"truncated BPG file: extension data ({h.extension_data_length} bytes) runs past the end")
        while pos < end:
            tag, pos = read_ue7(data, pos, "extension_tag")
            length, pos = read_ue7(data, pos, "extension_tag_length")
            if pos + length > end:
                raise BpgError(f"invalid BPG header: extension tag {tag} runs past extension_data_length")
            h.extensions.append((tag, data[pos:pos + length]))
            pos += length
    # features this decoder does not render get a clear refusal, named by field
    for name, bad in (("alpha1_flag", h.alpha1_flag), ("alpha2_flag", h.alpha2_flag),
                      ("animation_flag", h.animation_flag)):
        if bad:
            raise BpgError(f"unsupported BPG feature: {name} is set (only still, opaque images are decoded)")
    if h.bit_depth_minus_8:
        raise BpgError(f"unsupported BPG feature: bit_depth_minus_8 = {h.bit_depth_minus_8} (only 8-bit)")
    if h.color_space != 0:
        raise BpgError(f"unsupported BPG feature: color_space {h.color_space} "
                       f"({COLOR_SPACES[h.color_space]}); only 0 (ycbcr) is decoded")
    h.hevc_header_start = pos
    length, pos = read_ue7(data, pos, "hevc_header_length")
    if pos + length > len(data):
        raise BpgError(f"truncated BPG file: hevc_header ({length} bytes) runs past the end")
    r = BitReader(data[pos:pos + length], "BPG hevc_header")
    h.hevc_header = HevcHeader.from_bits(r)
    if r.byte_aligned_pos() != length:
        raise BpgError(f"invalid BPG hevc_header: hevc_header_length is {length} but the fields take "
                       f"{r.byte_aligned_pos()} bytes")
    h.data_offset = pos + length
    return h



# ------------------------------------------------------------- NAL / SPS / VPS

def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes (00 00 0x -> 00 00 03 0x for x <= 3)."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def unescape_nal(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def split_annexb(stream: bytes) -> list[bytes]:
    """NAL units (without start codes) of an Annex-B byte stream."""
    parts = stream.split(b"\x00\x00\x01")
    nals = [p[:-1] if p.endswith(b"\x00") else p for p in parts[1:]]  # 4-byte start codes
    return [n for n in nals if n]


def nal_type(nal: bytes) -> int:
    return (nal[0] >> 1) & 0x3F


def _profile_tier_level(w: BitWriter) -> None:
    """Main 4:4:4 16 Still Picture (RExt, profile 4), level 8.5 — what BPG declares."""
    w.u(2, 0)            # general_profile_space
    w.u(1, 0)            # general_tier_flag
    w.u(5, 4)            # general_profile_idc: format range extensions
    w.u(32, 1 << (31 - 4))  # general_profile_compatibility_flag[4]
    w.u(1, 1)            # progressive_source_flag
    w.u(1, 0)            # interlaced_source_flag
    w.u(1, 0)            # non_packed_constraint_flag
    w.u(1, 1)            # frame_only_constraint_flag
    # max_12bit, max_10bit, max_8bit, max_422chroma, max_420chroma, max_monochrome,
    # intra, one_picture_only, lower_bit_rate: 16-bit, 4:4:4, intra, one picture
    for flag in (0, 0, 0, 0, 0, 0, 1, 1, 1):
        w.u(1, flag)
    w.u(34, 0)           # general_reserved_zero_34bits
    w.u(1, 0)            # general_inbld_flag
    w.u(8, 255)          # general_level_idc: 8.5 * 30


def build_vps() -> bytes:
    w = BitWriter()
    w.u(16, (NAL_VPS << 9) | 1)  # NAL header, layer 0, temporal id 0
    w.u(4, 0)     # vps_video_parameter_set_id
    w.u(1, 1)     # vps_base_layer_internal_flag
    w.u(1, 1)     # vps_base_layer_available_flag
    w.u(6, 0)     # vps_max_layers_minus1
    w.u(3, 0)     # vps_max_sub_layers_minus1
    w.u(1, 1)     # vps_temporal_id_nesting_flag
    w.u(16, 0xFFFF)
    _profile_tier_level(w)
    w.u(1, 1)     # vps_sub_layer_ordering_info_present_flag
    w.ue(0)       # vps_max_dec_pic_buffering_minus1
    w.ue(0)       # vps_max_num_reorder_pics
    w.ue(0)       # vps_max_latency_increase_plus1
    w.u(6, 0)     # vps_max_layer_id
    w.ue(0)       # vps_num_layer_sets_minus1
    w.u(1, 0)     # vps_timing_info_present_flag
    w.u(1, 0)     # vps_extension_flag
    w.trailing_bits()
    return escape_rbsp(w.to_bytes())


def build_sps(h: BpgHeader) -> bytes:
    """The SPS a BPG decoder rebuilds from the file header (fixed values per the BPG spec).

    The picture is coded padded to the minimum CB size; there is no conformance window here:
    the caller crops to picture_width x picture_height itself, which also covers odd sizes in
    4:2:0 that a window in chroma units could not express exactly.
    """
    hh = h.hevc_header
    cb = hh.min_cb_size
    w = BitWriter()
    w.u(16, (NAL_SPS << 9) | 1)
    w.u(4, 0)     # sps_video_parameter_set_id
    w.u(3, 0)     # sps_max_sub_layers_minus1
    w.u(1, 1)     # sps_temporal_id_nesting_flag
    _profile_tier_level(w)
    w.ue(0)       # sps_seq_parameter_set_id
    chroma_format_idc = CHROMA_FORMAT_IDC[h.pixel_format]
    w.ue(chroma_format_idc)
    if chroma_format_idc == 3:
        w.u(1, 0)  # separate_colour_plane_flag
    w.ue(-(-h.picture_width // cb) * cb)
    w.ue(-(-h.picture_height // cb) * cb)
    w.u(1, 0)     # conformance_window_flag
    w.ue(h.bit_depth_minus_8)  # luma
    w.ue(h.bit_depth_minus_8)  # chroma
    w.ue(4)       # log2_max_pic_order_cnt_lsb_minus4
    w.u(1, 1)     # sps_sub_layer_ordering_info_present_flag
    w.ue(0)
    w.ue(0)
    w.ue(0)
    w.ue(hh.log2_min_luma_coding_block_size_minus3)
    w.ue(hh.log2_diff_max_min_luma_coding_block_size)
    w.ue(hh.log2_min_transform_block_size_minus2)
    w.ue(hh.log2_diff_max_min_transform_block_size)
    w.ue(hh.max_transform_hierarchy_depth_intra)  # inter: same as intra
    w.ue(hh.max_transform_hierarchy_depth_intra)
    w.u(1, 0)     # scaling_list_enabled_flag
    w.u(1, 1)     # amp_enabled_flag
    w.u(1, hh.sample_adaptive_offset_enabled_flag)
    w.u(1, hh.pcm_enabled_flag)
    if hh.pcm_enabled_flag:
        hh._pcm_bits(w)
    w.ue(0)       # num_short_term_ref_pic_sets
    w.u(1, 0)     # long_term_ref_pics_present_flag
    w.u(1, 1)     # sps_temporal_mvp_enabled_flag
    w.u(1, hh.strong_intra_smoothing_enabled_flag)
    w.u(1, 0)     # vui_parameters_present_flag
    w.u(1, hh.sps_extension_present_flag)
    if hh.sps_extension_present_flag:
        w.u(1, hh.sps_range_extension_flag)
        w.u(7, hh.sps_extension_7bits)
        if hh.sps_range_extension_flag:
            w.u(9, hh.sps_range_extension_flags)
    w.trailing_bits()
    return escape_rbsp(w.to_bytes())


@dataclass
class SpsInfo:
    """What the encoder needs from the SPS x265 wrote."""
    chroma_format_idc: int
    pic_width: int
    pic_height: int
    bit_depth_luma_minus8: int
    bit_depth_chroma_minus8: int
    amp_enabled_flag: int
    scaling_list_enabled_flag: int
    hevc_header: HevcHeader


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse an encoder's SPS NAL (with its 2-byte header) far enough to fill hevc_header."""
    r = BitReader(unescape_nal(nal), "HEVC SPS")
    r.u(16, "nal_unit_header")
    r.u(4, "sps_video_parameter_set_id")
    max_sub_layers_minus1 = r.u(3, "sps_max_sub_layers_minus1")
    if max_sub_layers_minus1:
        raise BpgError("HEVC SPS: sps_max_sub_layers_minus1 must be 0 for BPG")
    r.u(1, "sps_temporal_id_nesting_flag")
    r.u(96, "profile_tier_level")
    r.ue("sps_seq_parameter_set_id")
    chroma_format_idc = r.ue("chroma_format_idc")
    if chroma_format_idc == 3 and r.u(1, "separate_colour_plane_flag"):
        raise BpgError("HEVC SPS: separate_colour_plane_flag is not allowed in BPG")
    width, height = r.ue("pic_width_in_luma_samples"), r.ue("pic_height_in_luma_samples")
    if r.u(1, "conformance_window_flag"):
        for name in ("left", "right", "top", "bottom"):
            r.ue(f"conf_win_{name}_offset")
    bd_luma, bd_chroma = r.ue("bit_depth_luma_minus8"), r.ue("bit_depth_chroma_minus8")
    r.ue("log2_max_pic_order_cnt_lsb_minus4")
    r.u(1, "sps_sub_layer_ordering_info_present_flag")
    for name in ("max_dec_pic_buffering_minus1", "max_num_reorder_pics", "max_latency_increase_plus1"):
        r.ue(name)
    hh = HevcHeader()
    hh.log2_min_luma_coding_block_size_minus3 = r.ue("log2_min_luma_coding_block_size_minus3")
    hh.log2_diff_max_min_luma_coding_block_size = r.ue("log2_diff_max_min_luma_coding_block_size")
    hh.log2_min_transform_block_size_minus2 = r.ue("log2_min_luma_transform_block_size_minus2")
    hh.log2_diff_max_min_transform_block_size = r.ue("log2_diff_max_min_luma_transform_block_size")
    r.ue("max_transform_hierarchy_depth_inter")
    hh.max_transform_hierarchy_depth_intra = r.ue("max_transform_hierarchy_depth_intra")
    scaling = r.u(1, "scaling_list_enabled_flag")
    if scaling:
        raise BpgError("HEVC SPS: scaling lists cannot be expressed in a BPG header")
    amp = r.u(1, "amp_enabled_flag")
    hh.sample_adaptive_offset_enabled_flag = r.u(1, "sample_adaptive_offset_enabled_flag")
    hh.pcm_enabled_flag = r.u(1, "pcm_enabled_flag")
    if hh.pcm_enabled_flag:
        hh.pcm_sample_bit_depth_luma_minus1 = r.u(4, "pcm_sample_bit_depth_luma_minus1")
        hh.pcm_sample_bit_depth_chroma_minus1 = r.u(4, "pcm_sample_bit_depth_chroma_minus1")
        hh.log2_min_pcm_luma_coding_block_size_minus3 = r.ue("log2_min_pcm_luma_coding_block_size_minus3")
        hh.log2_diff_max_min_pcm_luma_coding_block_size = r.ue("log2_diff_max_min_pcm_luma_coding_block_size")
        hh.pcm_loop_filter_disabled_flag = r.u(1, "pcm_loop_filter_disabled_flag")
    # reference picture sets do not matter for the single IDR picture, but must be skipped
    num_rps = r.ue("num_short_term_ref_pic_sets")
    for i in range(num_rps):
        if i and r.u(1, "inter_ref_pic_set_prediction_flag"):
            raise BpgError("HEVC SPS: predicted reference picture sets are not supported")
        neg, pos = r.ue("num_negative_pics"), r.ue("num_positive_pics")
        for _ in range(neg + pos):
            r.ue("delta_poc_minus1")
            r.u(1, "used_by_curr_pic_flag")
    if r.u(1, "long_term_ref_pics_present_flag"):
        raise BpgError("HEVC SPS: long-term reference pictures are not supported")
    r.u(1, "sps_temporal_mvp_enabled_flag")
    hh.strong_intra_smoothing_enabled_flag = r.u(1, "strong_intra_smoothing_enabled_flag")
    if r.u(1, "vui_parameters_present_flag"):
        _skip_vui(r)
    hh.sps_extension_present_flag = r.u(1, "sps_extension_present_flag")
    if hh.sps_extension_present_flag:
        hh.sps_range_extension_flag = r.u(1, "sps_range_extension_flag")
        hh.sps_extension_7bits = r.u(7, "sps_extension_7bits")
        if hh.sps_range_extension_flag:
            hh.sps_range_extension_flags = r.u(9, "sps_range_extension_flags")
        if hh.sps_extension_7bits:
            # multilayer / 3D / SCC extensions carry data BPG cannot store
            raise BpgError("HEVC SPS: extensions other than range extension are not supported")
    return SpsInfo(chroma_format_idc, width, height, bd_luma, bd_chroma, amp, scaling, hh)


def _skip_vui(r: BitReader) -> None:
    if r.u(1, "aspect_ratio_info_present_flag") and r.u(8, "aspect_ratio_idc") == 255:
        r.u(32, "sar_width/sar_height")
    if r.u(1, "overscan_info_present_flag"):
        r.u(1, "overscan_appropriate_flag")
    if r.u(1, "video_signal_type_present_flag"):
        r.u(3, "video_format")
        r.u(1, "video_full_range_flag")
        if r.u(1, "colour_description_present_flag"):
            r.u(24, "colour_primaries/transfer_characteristics/matrix_coeffs")
    if r.u(1, "chroma_loc_info_present_flag"):
        r.ue("chroma_sample_loc_type_top_field")
        r.ue("chroma_sample_loc_type_bottom_field")
    r.u(3, "neutral_chroma/field_seq/frame_field_info_present")
    if r.u(1, "default_display_window_flag"):
        for _ in range(4):
            r.ue("def_disp_win_offset")
    if r.u(1, "vui_timing_info_present_flag"):
        r.u(64, "vui_num_units_in_tick/vui_time_scale")
        if r.u(1, "vui_poc_proportional_to_timing_flag"):
            r.ue("vui_num_ticks_poc_diff_one_minus1")
        if r.u(1, "vui_hrd_parameters_present_flag"):
            raise BpgError("HEVC SPS: HRD parameters are not supported")
    if r.u(1, "bitstream_restriction_flag"):
        r.u(3, "bitstream restriction flags")
        for _ in range(5):
            r.ue("bitstream restriction value")

