"""Class tables and the folder -> class-index rule.

ImageNet-1k index = position of the wnid among the 1000 sorted ILSVRC2012 wnids, which is the
output order of torchvision's ImageNet classifiers.  The table ships as data
(``imagenet_classes.tsv``: index, wnid, synset words) — a public fact list.
"""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import NamedTuple


TABLE = Path(__file__).with_name("imagenet_classes.tsv")
WNID = re.compile(r"^n\d{8}$")



#: The most classes a label space may have: a classifier head is allocated from this number
#: before anything else is read (ImageNet-21k has 21,841; 10^9 would be a 5 TB linear layer).
MAX_CLASSES = 100_000


class ClassCountError(ValueError):
    """A class count (from a manifest, a checkpoint, a class table or an option) out of range."""


def check_num_classes(n, what: str = "num_classes") -> int:
    """``n`` when it is a whole number in 1..MAX_CLASSES, else :class:`ClassCountError`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES:
        raise ClassCountError(f"{what} {n!r}: must be a whole number from 1 to {MAX_CLASSES:,}")
    return n


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


#: a class table larger than this is not one (MAX_CLASSES lines of long names)
CLASS_TABLE_MAX_BYTES = 16 << 20


def read_class_table(path: str | Path) -> dict[str, int]:
    """A ``--classes`` file: one folder name per line (index = line number), or
    ``index<TAB>name`` lines.  Every index is in 0..MAX_CLASSES-1 and belongs to one name,
    every name has one index: a table that gives two folders one label, or one folder two,
    would relabel images silently, so it is refused, naming the line."""
    from .bounded import BoundedReadError, read_text

    p = Path(path)
    try:
        text = read_text(p, "class table", max_bytes=CLASS_TABLE_MAX_BYTES)
    except FileNotFoundError:
        raise LabelSpaceError(f"{p}: no such class table") from None
    except BoundedReadError as exc:
        raise LabelSpaceError(str(exc)) from None
    mapping: dict[str, int] = {}
    owner: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip().isascii() and parts[0].strip().isdigit():
            digits, name = parts[0].strip(), parts[1].strip()
            index = int(digits) if len(digits) <= 9 else MAX_CLASSES
        else:
            index, name = lineno, parts[0].strip()
        where = f"{p}, line {lineno + 1}"
        if index >= MAX_CLASSES:
            raise LabelSpaceError(f"{where}: class index {parts[0].strip()[:20]} is not below {MAX_CLASSES:,}")
        if not name:
            raise LabelSpaceError(f"{where}: an index without a class name")
        if name in mapping:
            raise LabelSpaceError(f"{where}: {name!r} is listed twice (indices {mapping[name]} and {index})")
        if index in owner:
            raise LabelSpaceError(f"{where}: index {index} is given to both {owner[index]!r} and {name!r}")
        mapping[name], owner[index] = index, name
    if not mapping:
        raise LabelSpaceError(f"{p}: an empty class table")
    return mapping


def label_space_id(class_names: list[str]) -> str | None:
    """The identity of a label space: a digest of its class names in index order (the whole
    space, not the classes present).  Two sets of shards, or shards and a model, whose ids
    differ would give one index two meanings: ``train/{cat,dog,fox}`` and ``val/{cat,fox}``
    put fox at 2 and at 1.  None for unlabelled data."""
    if not class_names:
        return None
    text = "\n".join(str(n) for n in class_names)
    return "ls1-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


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
        mapping = read_class_table(classes_file)
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
