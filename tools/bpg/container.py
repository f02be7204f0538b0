"""The BPG container: file header (magic, format fields, ue7 sizes, extensions) and the
``hevc_header`` it stores in place of the VPS/SPS (see :mod:`.paramsets`).

Plain byte manipulation (no PyAV), so it can be tested and fuzzed alone.  Field names
follow the BPG spec so they can be checked side by side.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import BpgError
from .paramsets import HevcHeader, build_sps

MAGIC = b"BPG\xfb"

# pixel_format values (BPG spec); siting only changes chroma re-sampling, not the HEVC stream
FORMAT_GRAY, FORMAT_420, FORMAT_422, FORMAT_444, FORMAT_420_MPEG2, FORMAT_422_MPEG2 = range(6)
CHROMA_FORMAT_IDC = {FORMAT_GRAY: 0, FORMAT_420: 1, FORMAT_422: 2, FORMAT_444: 3,
                     FORMAT_420_MPEG2: 1, FORMAT_422_MPEG2: 2}
COLOR_SPACES = ("ycbcr", "rgb", "ycgco", "ycbcr_bt709", "ycbcr_bt2020")

# a 1-pixel image already needs a few bytes; anything beyond this is a corrupt size field
MAX_DIMENSION = 1 << 16


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


# ----------------------------------------------------------------------- the header

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

    @property
    def chroma_format_idc(self) -> int:
        return CHROMA_FORMAT_IDC[self.pixel_format]

    def encode(self) -> bytes:
        if self.alpha1_flag or self.alpha2_flag or self.animation_flag or self.extension_present_flag:
            raise ValueError("writing alpha, animation or extensions is not supported")
        out = bytearray(MAGIC)
        out.append((self.pixel_format << 5) | (self.alpha1_flag << 4) | self.bit_depth_minus_8)
        out.append((self.color_space << 4) | (self.extension_present_flag << 3) | (self.alpha2_flag << 2)
                   | (self.limited_range_flag << 1) | self.animation_flag)
        out += write_ue7(self.picture_width) + write_ue7(self.picture_height)
        out += write_ue7(self.picture_data_length)
        hevc = self.hevc_header.encode()
        out += write_ue7(len(hevc)) + hevc
        return bytes(out)

    def sps(self) -> bytes:
        """The SPS NAL unit a decoder rebuilds from this header."""
        return build_sps(self.hevc_header, self.chroma_format_idc, self.picture_width,
                         self.picture_height, self.bit_depth_minus_8)


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
    h.hevc_header, used = HevcHeader.decode(data[pos:pos + length])
    if used != length:
        raise BpgError(f"invalid BPG hevc_header: hevc_header_length is {length} but the fields take "
                       f"{used} bytes")
    h.data_offset = pos + length
    return h
