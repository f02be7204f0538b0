"""Class tables and the folder -> class-index rule.

ImageNet-1k index = position of the wnid among the 1000 sorted ILSVRC2012 wnids, which is the
output order of torchvision's ImageNet classifiers.  The table ships as data
(``imagenet_classes.tsv``: index, wnid, synset words) — a public fact list.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import NamedTuple

TABLE = Path(__file__).with_name("imagenet_classes.tsv")
WNID = re.compile(r"^n\d{8}$")


class ImageNetClass(NamedTuple):
    index: int
    wnid: str
    words: str

    @property
    def name(self) -> str:
        """Short name: the first synonym of the synset words ("tench" for "tench, Tinca tinca")."""
        return self.words.split(",")[0].strip()


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    rows = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        index, wnid, words = line.split("\t")
        rows.append(ImageNetClass(int(index), wnid, words))
    assert [r.index for r in rows] == list(range(1000)), "imagenet_classes.tsv must list indices 0..999"
    return tuple(rows)


@functools.lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    return {c.wnid: c.index for c in imagenet_classes()}


def imagenet_name(index: int) -> str:
    return imagenet_classes()[index].name


class LabelSpaceError(ValueError):
    """Class folders whose label space is ambiguous (the message names them)."""


def class_index(folders: list[str], classes_file: str | Path | None = None,
                where: str = "the source") -> tuple[dict[str, int], int, list[str]]:
    """Map class folder names to indices.

    Returns (folder -> index, number of classes of the label space, class names by index).
    Rule: ``classes_file`` (one folder name per line, index = line number, or
    ``index<TAB>name`` lines) overrides; else, when every folder is an ImageNet-1k wnid, the
    ImageNet-1k index (so a subset such as Imagenette is labelled like 1000-class models);
    else, when no folder is one, the position in the sorted folder list (torchvision's
    ImageFolder rule).  Folders of both kinds are an error naming the odd ones: one stray
    folder (an output folder, ``lost+found``) must never switch a whole split from ImageNet
    indices to folder order, which would silently relabel every image.
    """
    if classes_file is not None:
        mapping: dict[str, int] = {}
        for lineno, line in enumerate(Path(classes_file).read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) >= 2 and parts[0].strip().isdigit():
                mapping[parts[1].strip()] = int(parts[0])
            else:
                mapping[parts[0].strip()] = lineno
        missing = sorted(set(folders) - set(mapping))
        if missing:
            raise LabelSpaceError(f"{classes_file}: no index for class folder(s) {', '.join(missing[:5])}"
                                  + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        n = max(mapping.values()) + 1
        names = [""] * n
        for k, v in mapping.items():
            names[v] = k
        return {f: mapping[f] for f in folders}, n, names
    table = wnid_to_index()
    known = [f for f in folders if f in table]
    if folders and len(known) == len(folders):
        return {f: table[f] for f in folders}, 1000, [c.name for c in imagenet_classes()]
    if known:
        odd = sorted(f for f in folders if f not in table)
        listed = ", ".join(repr(f) for f in odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        raise LabelSpaceError(
            f"{where}: folder(s) {listed} are not ImageNet-1k wnids while the {len(known)} other class folder(s) are; "
            "their labels would be ambiguous. Move them out of the split, or give --classes FILE to set the label space")
    ordered = sorted(folders)
    return {f: i for i, f in enumerate(ordered)}, len(ordered), ordered
