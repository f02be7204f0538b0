"""What a bitstream will cost to decode, read from its headers without decoding anything:
the picture's size, and the counts that multiply the cost of a picture of that size (tiles,
frames, components, progressive scans), for JPEG, JPEG 2000, WebP, ISOBMFF (AVIF, the JPEG
XL container) and JPEG XL codestreams.

The decoders behind these formats allocate as soon as they open a file (OpenJPEG its tiles'
state, libwebp's animation decoder the canvas, libjxl every frame), so each codec reads its
:class:`Header` here and checks it against the decode budget first
(:meth:`pipeline.codecs.Codec.header`).  Every reader raises :class:`HeaderError` on data too
short or malformed to tell; the codec turns it into a one-line CodecError.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Iterator


class HeaderError(ValueError):
    """A header too short or malformed to tell the picture's size (the message says where)."""


@dataclass(frozen=True)
class Header:
    """The counts of a bitstream that bound its decode cost (each checked against the
    matching bound of :class:`pipeline.limits.DecodeBudget`)."""
    width: int
    height: int
    tiles: int = 1
    #: pictures in the file; None: an animation that does not say how many
    frames: int | None = 1
    components: int = 3
    scans: int = 1


# --------------------------------------------------------------------------- JPEG

#: start-of-frame markers (C4 DHT, C8 JPG and CC DAC are not)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: the next marker: fill bytes, then a code that is not a stuffed zero, not a restart marker
_NEXT_MARKER = re.compile(rb"\xff+([^\x00\xff\xd0-\xd7])")


def jpeg_header(data: bytes, max_scans: int | None = None) -> Header:
    """Size and components from the frame header, and the number of scans (each a pass over
    every coefficient of a progressive picture), walking the marker segments to EOI; the
    walk stops once the scans exceed ``max_scans``."""
    if not data.startswith(b"\xff\xd8"):
        raise HeaderError("no SOI marker")
    pos, scans, frame = 2, 0, None
    n = len(data)
    while True:
        m = _NEXT_MARKER.search(data, pos)
        if m is None:
            break
        marker, pos = m.group(1)[0], m.end()
        if marker == 0xD9:                     # EOI
            break
        if marker == 0x01:                     # TEM: no length
            continue
        if pos + 2 > n:
            break
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            raise HeaderError(f"marker FF{marker:02X} at byte {pos - 2} has length {length}")
        if marker in _SOF and frame is None:
            if pos + 8 > n:
                raise HeaderError("frame header truncated")
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            frame = (width, height, data[pos + 7])
        elif marker == 0xDA:
            scans += 1
            if max_scans is not None and scans > max_scans:
                break
        pos += length
    if frame is None:
        raise HeaderError("no frame header (SOF marker) before the first scan")
    return Header(frame[0], frame[1], components=frame[2], scans=max(scans, 1))


# --------------------------------------------------------------------------- JPEG 2000

J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def j2k_codestream(data: bytes) -> bytes:
    """The codestream: the data itself, or the payload of a JP2 file's ``jp2c`` box."""
    if data.startswith(J2K_SOC_SIZ):
        return data
    if not data.startswith(JP2_SIGNATURE):
        raise HeaderError("neither a JPEG 2000 codestream nor a JP2 file")
    for kind, s, e in boxes(data):
        if kind == b"jp2c":
            return data[s:e]
    raise HeaderError("JP2 file without a codestream box ('jp2c')")


def j2k_header(data: bytes) -> Header:
    """The SIZ marker segment: the picture's size (the reference grid less its offset), its
    components, and its tiles: OpenJPEG allocates each tile's state (about 10 KB) when it
    reads the header, so 65,280 tiles of one pixel cost 630 MB before any data is read."""
    cs = j2k_codestream(data)
    if not cs.startswith(J2K_SOC_SIZ):
        raise HeaderError("the codestream does not start with the SOC and SIZ markers")
    if len(cs) < 42:
        raise HeaderError("SIZ marker segment truncated")
    (lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, csiz) = struct.unpack(
        ">HHIIIIIIIIH", cs[4:42])
    if lsiz != 38 + 3 * csiz or csiz < 1:
        raise HeaderError(f"SIZ length {lsiz} does not match its {csiz} components")
    if not (xosiz < xsiz and yosiz < ysiz and xtsiz and ytsiz and xtosiz <= xosiz and ytosiz <= yosiz
            and xtosiz + xtsiz > xosiz and ytosiz + ytsiz > yosiz):
        raise HeaderError(f"SIZ geometry is invalid (image {xsiz}x{ysiz} at {xosiz},{yosiz}, tiles "
                          f"{xtsiz}x{ytsiz} at {xtosiz},{ytosiz})")
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    return Header(xsiz - xosiz, ysiz - yosiz, tiles=tiles, components=csiz)


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


def webp_header(data: bytes) -> Header:
    """:func:`webp_size`, and the frames of an animation (its ``ANMF`` chunks)."""
    width, height = webp_size(data)
    frames, pos = 0, 12
    while pos + 8 <= len(data):
        frames += data[pos:pos + 4] == b"ANMF"
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        pos += 8 + size + (size & 1)
    return Header(width, height, frames=max(frames, 1))


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


def heif_header(data: bytes) -> Header:
    """:func:`heif_size`, and the items of the file as its tiles: a grid of 256x256 items of a
    few pixels each costs one decoder run per item, whatever the size of the whole."""
    width, height = heif_size(data)
    meta = _child(data, 0, len(data), b"meta")
    iinf = _child(data, meta[0] + 4, meta[1], b"iinf")
    items = 1
    if iinf is not None:
        s, e = iinf
        if e - s < 6:
            raise HeaderError("'iinf' box truncated")
        items = (int.from_bytes(data[s + 4:s + 6], "big") if data[s] == 0 else
                 int.from_bytes(data[s + 4:s + 8], "big"))
    return Header(width, height, tiles=max(items, 1))


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
                raise HeaderError("SizeHeader or ImageMetadata truncated")
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def size(self, small: bool) -> int:
        if small:
            return (self.read(5) + 1) * 8
        return self.read((9, 13, 18, 30)[self.read(2)]) + 1

    def u32(self, *dist: tuple[int, int]) -> int:
        """JPEG XL's U32: a 2-bit selector, then (bits, offset) of the chosen distribution."""
        bits, offset = dist[self.read(2)]
        return self.read(bits) + offset

    def size_header(self) -> tuple[int, int]:
        small = bool(self.read(1))
        height = self.size(small)
        ratio = self.read(3)
        if ratio == 0:
            return self.size(small), height
        num, den = _JXL_RATIOS[ratio]
        return height * num // den, height


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
    return _jxl_fields(data)[0]


def _jxl_fields(data: bytes) -> tuple[tuple[int, int], bool, int]:
    """((width, height), animated, extra channels): the SizeHeader and the start of the
    ImageMetadata that follows it (ISO/IEC 18181-1, A.3 and A.6)."""
    stream = jxl_codestream(data)
    if not stream.startswith(JXL_CODESTREAM):
        raise HeaderError("codestream does not start with FF 0A")
    bits = _Bits(stream[2:96])
    size = bits.size_header()
    animated, extra = False, 0
    if not bits.read(1):                        # ImageMetadata.all_default
        if bits.read(1):                        # extra_fields
            bits.read(3)                        # orientation
            if bits.read(1):                    # have_intr_size
                bits.size_header()
            if bits.read(1):                    # have_preview: PreviewHeader
                div8 = bits.read(1)
                def preview_side():
                    return (bits.u32((0, 16), (0, 32), (5, 1), (9, 33)) if div8 else
                            bits.u32((6, 1), (8, 65), (10, 321), (12, 1345)))
                preview_side()
                if bits.read(3) == 0:
                    preview_side()
            animated = bool(bits.read(1))       # have_animation
        if not animated:
            if bits.read(1):                    # BitDepth.float_sample
                bits.u32((0, 32), (0, 16), (0, 24), (6, 1))
                bits.read(4)
            else:
                bits.u32((0, 8), (0, 10), (0, 12), (6, 1))
            bits.read(1)                        # modular_16bit_buffers
            extra = bits.u32((0, 0), (0, 1), (4, 2), (12, 1))
    return size, animated, extra


def jxl_header(data: bytes) -> Header:
    """:func:`jxl_size`, the extra channels (alpha, depth ...: each a plane as large as the
    picture) among the components, and whether the file is an animation, whose frame count no
    header gives (libjxl learns it by walking every frame, and the first shown frame may blend
    any number of frames of zero duration)."""
    (width, height), animated, extra = _jxl_fields(data)
    return Header(width, height, frames=None if animated else 1, components=3 + extra)
