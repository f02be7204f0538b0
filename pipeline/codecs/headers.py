"""Picture sizes read from the headers of WebP, ISOBMFF (AVIF, the JPEG XL container) and
JPEG XL codestreams, without decoding anything.

The decoders behind these formats allocate the whole picture (libwebp's animation decoder
even at open, before Pillow can look at the size), so each decoder reads the size here and
checks it against the pixel budget first.  Every reader raises :class:`HeaderError` on data
too short or malformed to hold a size; the codec turns it into a one-line CodecError.
"""
from __future__ import annotations

import struct
from typing import Iterator


class HeaderError(ValueError):
    """A header too short or malformed to tell the picture's size (the message says where)."""


# --------------------------------------------------------------------------- WebP (RIFF)

def webp_image_chunk(data: bytes) -> bytes | None:
    """The fourcc of the chunk that holds the picture (``VP8 `` lossy, ``VP8L`` lossless,
    ``ANMF`` animation), ``b""`` for a RIFF/WEBP file without one, None when not WebP."""
    if len(data) < 16 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    pos = 12
    while pos + 8 <= len(data):
        fourcc = bytes(data[pos:pos + 4])
        if fourcc in (b"VP8 ", b"VP8L", b"ANMF"):
            return fourcc
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        pos += 8 + size + (size & 1)
    return b""


def webp_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a WebP file: the canvas of an extended (VP8X) file, else the
    picture's own 14-bit fields."""
    if webp_image_chunk(data) is None:
        raise HeaderError("not a RIFF/WEBP file")
    fourcc, payload = bytes(data[12:16]), data[20:]
    if fourcc == b"VP8X":
        if len(payload) < 10:
            raise HeaderError("VP8X chunk truncated")
        return (int.from_bytes(payload[4:7], "little") + 1, int.from_bytes(payload[7:10], "little") + 1)
    if fourcc == b"VP8 ":
        if len(payload) < 10 or payload[3:6] != b"\x9d\x01\x2a":
            raise HeaderError("VP8 frame header truncated or without its start code")
        w, h = struct.unpack("<HH", payload[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if fourcc == b"VP8L":
        if len(payload) < 5 or payload[0] != 0x2F:
            raise HeaderError("VP8L header truncated or without its signature")
        bits = int.from_bytes(payload[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise HeaderError(f"first chunk {fourcc!r} is not VP8, VP8L or VP8X")


# --------------------------------------------------------------------------- ISOBMFF boxes

def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in ``data[start:end]``; a box that
    claims more bytes than there are is a HeaderError (a truncated file)."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise HeaderError(f"box {kind!r} at byte {pos} truncated")
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise HeaderError(f"box {kind!r} at byte {pos} claims {size} bytes; {end - pos} are left")
        yield kind, pos + header, pos + size
        pos += size


def ftyp_brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of a leading ``ftyp`` box (empty when there is none)."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return set()
    size = min(int.from_bytes(data[:4], "big"), len(data))
    return {bytes(data[8:12])} | {bytes(data[i:i + 4]) for i in range(16, size - 3, 4)}


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in boxes(data, start, end):
        if k == kind:
            return s, e
    return None


def heif_size(data: bytes) -> tuple[int, int]:
    """The largest ``ispe`` (image spatial extents) among the item properties of a HEIF/AVIF
    file: every picture the file holds (the primary image, a grid's tiles, an alpha plane)
    is at most that big, so checking it covers them all."""
    meta = _child(data, 0, len(data), b"meta")
    if meta is None:
        raise HeaderError("no 'meta' box (not a still-image AVIF, or truncated)")
    iprp = _child(data, meta[0] + 4, meta[1], b"iprp")        # meta is a FullBox
    ipco = _child(data, *iprp, b"ipco") if iprp else None
    if ipco is None:
        raise HeaderError("no item properties ('iprp'/'ipco' box)")
    sizes = []
    for kind, s, e in boxes(data, *ipco):
        if kind == b"ispe":
            if e - s < 12:
                raise HeaderError("'ispe' box truncated")
            sizes.append(struct.unpack(">II", data[s + 4:s + 12]))
    if not sizes:
        raise HeaderError("no image size ('ispe' property)")
    return max(sizes, key=lambda wh: wh[0] * wh[1])


# --------------------------------------------------------------------------- JPEG XL

JXL_CODESTREAM = b"\xff\x0a"
JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
#: SizeHeader's aspect ratios (ratio field 1..7): xsize = ysize * num // den
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


class _Bits:
    """JPEG XL reads fields least significant bit first."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise HeaderError("SizeHeader truncated")
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def size(self, small: bool) -> int:
        if small:
            return (self.read(5) + 1) * 8
        return self.read((9, 13, 18, 30)[self.read(2)]) + 1


def jxl_codestream(data: bytes) -> bytes:
    """The start of the codestream: the file itself, or the payload of the container's first
    ``jxlc`` / ``jxlp`` box."""
    if data.startswith(JXL_CODESTREAM):
        return data
    if not data.startswith(JXL_CONTAINER):
        raise HeaderError("neither a JPEG XL codestream nor the JPEG XL container")
    for kind, s, e in boxes(data):
        if kind == b"jxlc":
            return data[s:e]
        if kind == b"jxlp":
            return data[s + 4:e]          # a 4-byte part index precedes the bytes
    raise HeaderError("container without a codestream box ('jxlc' or 'jxlp')")


def jxl_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the codestream's SizeHeader (the bits right after FF 0A)."""
    stream = jxl_codestream(data)
    if not stream.startswith(JXL_CODESTREAM):
        raise HeaderError("codestream does not start with FF 0A")
    bits = _Bits(stream[2:18])
    small = bool(bits.read(1))
    height = bits.size(small)
    ratio = bits.read(3)
    if ratio == 0:
        return bits.size(small), height
    num, den = _JXL_RATIOS[ratio]
    return height * num // den, height
