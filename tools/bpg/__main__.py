"""Command line, flags as bpgenc/bpgdec:

    python -m tools.bpg enc in.png -o out.bpg -q 41 -m 9 -f 420
    python -m tools.bpg dec out.bpg -o out.png
    python -m tools.bpg info out.bpg
"""
from __future__ import annotations

import sys

import click
import numpy as np


from .limits import DecodeBudget, FileKindError, max_pixels_option, open_regular_file

#: the largest BPG file ``dec`` and ``info`` read (a whole 50 M-pixel photo is a few MB)
MAX_FILE_BYTES = 256 << 20


@click.group()
def main():
    """BPG encoder/decoder over x265 and FFmpeg (PyAV), compatible with BPG 0.9.8."""


def _read_file(infile: str) -> bytes:
    """A regular file's bytes (a FIFO or /dev/zero is refused, not waited on or read for ever)."""
    from .limits import read_regular
    try:
        return read_regular(infile, "BPG file", MAX_FILE_BYTES)
    except OSError as exc:
        raise click.ClickException(str(exc) if isinstance(exc, FileKindError)
                                   else f"{infile}: cannot read: {exc.strerror or exc}") from None


@main.command()
@click.argument("infile", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "outfile", default="out.bpg", show_default=True, help="output .bpg file")
@click.option("-q", "qp", type=click.IntRange(0, 51), default=29, show_default=True,
              help="quantizer (smaller is better quality), as bpgenc")
@click.option("-m", "level", type=click.IntRange(1, 9), default=8, show_default=True,
              help="compression level: x265 preset index (9 = placebo, the paper's setting)")
@click.option("-f", "cfmt", type=click.Choice(["420", "444", "gray"]), default=None,
              help="chroma format [default: 420; gray for grayscale input]")
@click.option("-b", "bit_depth", type=int, default=8, show_default=True, help="bit depth (only 8)")
@click.option("-c", "color_space", default="ycbcr", show_default=True, help="colour space (only ycbcr)")
@max_pixels_option
def enc(infile, outfile, qp, level, cfmt, bit_depth, color_space, budget):
    """Encode a PNG/JPEG/... image to BPG."""
    from . import BpgError, encode

    if bit_depth != 8:
        raise click.BadParameter(f"only -b 8 is supported, got {bit_depth}", param_hint="-b")
    if color_space != "ycbcr":
        raise click.BadParameter(f"only -c ycbcr is supported, got {color_space!r}", param_hint="-c")
    arr, cfmt = _read_image(infile, cfmt, budget)
    try:
        data = encode(arr, q=qp, effort=level, chroma=cfmt)
    except (BpgError, ValueError) as exc:
        raise click.ClickException(f"{infile}: cannot encode: {exc}") from None
    try:
        with open(outfile, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise click.ClickException(f"{outfile}: cannot write: {exc.strerror or exc}") from None


#: what ``enc`` reads (as bpgenc reads PNG and JPEG); EPS and other scriptable formats never
INPUT_FORMATS = ("PNG", "JPEG", "PPM", "BMP", "TIFF", "WEBP", "GIF", "TGA")


def _read_image(infile: str, cfmt: str | None, budget: DecodeBudget) -> tuple[np.ndarray, str]:
    """The input as 8-bit RGB (or gray), converted as the pipeline's crops are (16-bit
    gray scaled to 8 bits, not clipped); a one-line error naming the file otherwise."""
    from PIL import Image

    from .image import to_rgb
    from .limits import PixelBudgetError

    try:
        with open_regular_file(infile, "picture") as f, Image.open(f, formats=list(INPUT_FORMATS)) as img:
            budget.check_pixels(*img.size, infile)
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                raise click.ClickException(f"{infile}: alpha channels are not supported; flatten the image first")
            gray = img.mode in ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
            cfmt = cfmt or ("gray" if gray else "420")
            rgb = np.asarray(to_rgb(img))
    except click.ClickException:
        raise
    except (PixelBudgetError, FileKindError) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - unreadable input is a user error, not a traceback
        raise click.ClickException(f"{infile}: cannot read the image: {exc}") from None
    return (rgb[..., 0].copy() if gray and cfmt == "gray" else rgb), cfmt


@main.command()
@click.argument("infile", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "outfile", default="out.png", show_default=True,
              help="output image (.png or .ppm, by extension)")
@max_pixels_option
def dec(infile, outfile, budget):
    """Decode a BPG file to PNG/PPM."""
    from PIL import Image

    from . import BpgError, decode

    data = _read_file(infile)
    try:
        rgb = decode(data, budget)
    except (BpgError, ValueError) as exc:
        raise click.ClickException(f"{infile}: {exc}") from None
    try:
        Image.fromarray(rgb).save(outfile)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{outfile}: cannot write: {exc}") from None


@main.command()
@click.argument("infile", type=click.Path(exists=True, dir_okay=False))
def info(infile):
    """Print the header fields of a BPG file."""
    from . import BpgError, read_header

    data = _read_file(infile)
    try:
        header = read_header(data)
    except BpgError as exc:
        raise click.ClickException(f"{infile}: {exc}") from None
    click.echo(f"file: {infile} ({len(data)} bytes, HEVC data {len(data) - header.data_offset} bytes)")
    for key, value in header.fields().items():
        if key == "extensions":
            value = [(tag, len(payload)) for tag, payload in value]
        click.echo(f"{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
