"""JPEG 2000 through glymur / OpenJPEG.

``q`` is the compression ratio against raw 24-bit RGB (the paper's 75, 200, 400): OpenJPEG's
rate control targets W·H·3 / q bytes.  Reversible 5/3 wavelet, and — as in the paper — no
multi-component (colour) transform by default (option ``mct``).

Container (option ``container``):

- ``jp2`` (the default): a JP2 file, boxes around the codestream — what the paper's code
  wrote (Pillow saving to a BytesIO or a ``.jp2`` path writes JP2).  OpenJPEG's rate target
  covers the whole file, so the boxes (about 85 bytes) come out of the codestream's budget.
- ``j2k``: the raw codestream (starting with the SOC marker), what a camera would transmit:
  at the same ratio it spends every byte on the picture (a little more PSNR and SSIM).

``bytes`` counts the whole file either way.

glymur reads and writes files only, so each process encodes through one reusable file in
a private temporary folder (on /dev/shm when there is one).  Decoding uses Pillow's
in-memory OpenJPEG decoder (no file); a test checks it gives glymur's pixels exactly.
"""
from __future__ import annotations

import atexit
import ctypes.util
import os
import shutil
import tempfile
import threading
import warnings

import numpy as np
import PIL

from .base import Codec, CodecError, Option, pil_decode, register
from .headers import j2k_header

J2K_MAGIC = b"\xff\x4f\xff\x51"                 # SOC + SIZ markers
JP2_MAGIC = b"\x00\x00\x00\x0cjP  \r\n\x87\n"   # JP2 signature box


def _glymur():
    """Import glymur and make sure it found libopenjp2, with an actionable message if not."""
    import glymur

    if glymur.version.openjpeg_version in ("0.0.0", None, ""):
        found = ctypes.util.find_library("openjp2")
        raise CodecError(
            "glymur cannot find the OpenJPEG library (libopenjp2)"
            + (f"; ctypes found {found!r} but glymur did not load it" if found else "")
            + ". Install it: `apt-get install -y libopenjp2-7` (Debian/Ubuntu), or point glymur at one "
            "with a glymurrc file (see glymur's documentation)."
        )
    return glymur


_local = threading.local()


def _scratch(suffix: str) -> str:
    """One scratch file per process and thread, removed at exit."""
    path = getattr(_local, "paths", {}).get(suffix)
    if path is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        folder = tempfile.mkdtemp(prefix="m2m-j2k-", dir=base)
        atexit.register(shutil.rmtree, folder, True)
        path = os.path.join(folder, "scratch" + suffix)
        _local.paths = {**getattr(_local, "paths", {}), suffix: path}
    return path


#: OpenJPEG needs the lowest resolution level to keep at least one pixel: a picture whose
#: shorter side is S allows floor(log2(S)) + 1 levels, 8 for the 224² crops
MAX_NUMRES_224 = 8


@register
class J2kCodec(Codec):
    name = "j2k"
    title = "JPEG 2000"
    order = 2
    ext = "jp2"
    extensions = ("jp2", "j2k")
    magics = (J2K_MAGIC, JP2_MAGIC)
    pil_formats = ("JPEG2000",)
    #: size, components and tiles from the SIZ marker: OpenJPEG allocates every tile's state
    #: when it reads the header (65,280 tiles of one pixel: 630 MB from 73 bytes)
    header_reader = staticmethod(j2k_header)
    q_range = (1, 10000)
    q_integer = False
    q_meaning = "compression ratio (raw 24-bit RGB bytes / compressed bytes)"
    default_q = 200
    options_spec = {
        "mct": Option(bool, False, "RCT colour transform before the wavelet (the paper: off)"),
        "container": Option(str, "jp2", "jp2 = JP2 file with boxes (the paper's), "
                            "j2k = raw codestream (the leaner choice for transmission)",
                            choices=("jp2", "j2k")),
        "numres": Option(int, 6, "resolution levels (wavelet decompositions + 1); at most 8 "
                         "for a 224² crop", range=(1, MAX_NUMRES_224)),
    }

    def __init__(self, q=None, **options):
        super().__init__(q, **options)
        self.ext = self.options["container"]

    def encode(self, rgb: np.ndarray) -> bytes:
        numres = self.options["numres"]
        h, w = rgb.shape[:2]
        if min(h, w) >> (numres - 1) < 1:
            raise CodecError(f"codec 'j2k': option numres={numres} needs pictures of at least "
                             f"{1 << (numres - 1)} pixels on the shorter side; this one is {w}x{h}")
        glymur = _glymur()
        path = _scratch("." + self.options["container"])
        if os.path.exists(path):
            os.remove(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # glymur warns about colour-space guesses
            glymur.Jp2k(path, data=np.ascontiguousarray(rgb), cratios=[self.q], irreversible=False,
                        mct=self.options["mct"], numres=numres)
        with open(path, "rb") as f:
            return f.read()

    def decode(self, data: bytes, budget=None) -> np.ndarray:
        self.header(data, budget)
        return pil_decode(data, "JPEG 2000", self.pil_formats, budget)

    def params(self):
        return {"q": self.q, "wavelet": "5/3 reversible", **self.options}

    @classmethod
    def versions(cls) -> dict[str, str]:
        try:
            glymur = _glymur()
            v = {"glymur": glymur.__version__, "openjpeg_encoder": glymur.version.openjpeg_version}
        except (ImportError, CodecError) as exc:
            v = {"glymur": f"unavailable: {exc}"}
        from PIL import features
        return {**v, "pillow": PIL.__version__, "openjpeg_decoder": str(features.version("jpg_2000"))}


def glymur_decode(data: bytes, suffix: str = ".j2k") -> np.ndarray:
    """Decode with glymur/libopenjp2 (used by tests to check Pillow's decode)."""
    glymur = _glymur()
    path = _scratch("-dec" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    return glymur.Jp2k(path)[:]
