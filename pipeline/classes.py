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


def class_index(folders: list[str], classes_file: str | Path | None = None) -> tuple[dict[str, int], int, list[str]]:
    """Map class folder names to indices.

    Returns (folder -> index, number of classes of the label space, class names by index).
    Rule: ``classes_file`` (one folder name per line, index = line number, or
    ``index<TAB>name`` lines) overrides; else, when every folder is an ImageNet wnid, the
    ImageNet-1k index (so a subset such as Imagenette is labelled like 1000-class models);
    else the position in the sorted folder list (torchvision's ImageFolder rule).
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
            raise ValueError(f"{classes_file}: no index for class folder(s) {', '.join(missing[:5])}")
        n = max(mapping.values()) + 1
        names = [""] * n
        for k, v in mapping.items():
            names[v] = k
        return {f: mapping[f] for f in folders}, n, names
    if folders and all(WNID.match(f) for f in folders):
        table = wnid_to_index()
        unknown = [f for f in folders if f not in table]
        if not unknown:
            return {f: table[f] for f in folders}, 1000, [c.name for c in imagenet_classes()]
    ordered = sorted(folders)
    return {f: i for i, f in enumerate(ordered)}, len(ordered), ordered
