"""What a manifest promises, held against what the files can give: the shards it lists,
the samples each can hold, the size of every picture.

- A shard the manifest lists that the user's pattern selects but that is not on disk (a
  deleted or never copied tar) stays in the selection as a missing shard: its samples are
  expected, and the loaders count them as lost.  The expected count follows the manifest,
  not the files present.
- A count no tar can meet (10^12 samples in a 5 KB shard) is refused before the first pass:
  a sample is at least one 512-byte tar header and one 512-byte block.
- A tar the manifest does not list is refused when the manifest lists its shards.
- Every picture of a batch has the manifest's crop size; a picture of another size is that
  sample's counted skip, refused from its header by a pixel budget of the expected size
  before it is decoded (a 7000x7000 JPEG never allocates 147 MB, nor sizes the batch).
"""
from __future__ import annotations

import fnmatch
import os
import re

from braceexpand import braceexpand

from pipeline.limits import DEFAULT_BUDGET, PixelBudgetError

from ..clitools import UserError

#: the smallest tar sample: one member's header and one data block
MIN_SAMPLE_BYTES = 1024
#: pictures larger than this side are not a crop of this pipeline
MAX_SIDE = 4096
DEFAULT_PICTURE = (224, 224)


class CountError(UserError, ValueError):
    """A manifest whose counts the shards cannot meet (one line, names the shard)."""


def missing_listed(patterns: list[str], folder: str, listed: list[str], present: list[str]) -> list[str]:
    """Paths of the shards of ``folder`` that the manifest lists, that one of ``patterns``
    selects (the folder itself, a glob or a brace pattern), and that are not on disk."""
    have = {os.path.basename(p) for p in present}
    out = []
    for name in listed:
        if name in have:
            continue
        path = os.path.join(folder, name)
        for pat in patterns:
            if any(os.path.abspath(p) == folder or fnmatch.fnmatchcase(path, os.path.abspath(p))
                   for p in braceexpand(str(pat))):
                out.append(path)
                break
    return out


def check_counts(folder: str, counts: dict[str, int], present: list[str]) -> None:
    """Refuse a selected tar the manifest does not list, and a count its tar cannot hold."""
    if not counts:
        return
    for path in present:
        name = os.path.basename(path)
        if name not in counts:
            raise CountError(f"{path}: not a shard of {folder}'s manifest (a leftover, or another build's); "
                             "remove it or rebuild the manifest")
        try:
            size = os.stat(path).st_size
        except OSError:
            continue    # read later, and counted as lost there
        if counts[name] > size // MIN_SAMPLE_BYTES:
            raise CountError(f"{path}: the manifest lists {counts[name]:,} samples, more than its {size:,} bytes "
                             f"can hold ({size // MIN_SAMPLE_BYTES:,} at most)")


def picture_size(manifests) -> tuple[int, int]:
    """(width, height) of every picture of these settings: the manifests' centre crop."""
    sizes = set()
    for m in manifests:
        crop = m.get("crop") if isinstance(m.get("crop"), dict) else {}
        side = crop.get("center_crop", DEFAULT_PICTURE[0])
        if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_SIDE:
            raise CountError(f"crop size {side!r} in a manifest is not a whole number from 1 to {MAX_SIDE}")
        sizes.add((side, side))
    if len(sizes) > 1:
        raise CountError(f"settings of different crop sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}) "
                         "cannot share batches")
    return sizes.pop() if sizes else DEFAULT_PICTURE


_SIZE = re.compile(r"(\d+)x(\d+)")


def decode_sized(decode, data: bytes, picture: tuple[int, int]):
    """``decode(data, budget)`` for a picture of exactly ``picture`` (width, height): a larger
    one is refused from its header (the decoders check the budget they are handed, here of
    exactly that many pixels, before allocating), another size after decoding; both raise
    ValueError naming the size found."""
    w, h = picture
    try:
        a = decode(data, DEFAULT_BUDGET.with_pixels(w * h))
    except PixelBudgetError as exc:
        found = _SIZE.search(str(exc))
        if found is None:           # another bound of the budget (tiles, frames ...): its own words
            raise ValueError(str(exc)) from None
        raise ValueError(f"a {found.group(1)}x{found.group(2)} picture, not the manifest's {w}x{h}") from None
    if a.shape[:2] != (h, w):
        raise ValueError(f"a {a.shape[1]}x{a.shape[0]} picture, not the manifest's {w}x{h}")
    return a
