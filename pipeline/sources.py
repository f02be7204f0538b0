"""Which files make up a split, in a fixed order, with their labels and stable keys."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .classes import class_index

UNLABELLED = -1


@dataclass(frozen=True)
class Item:
    path: Path      # absolute path of the source file
    rel: str        # path relative to the source root, "/"-separated (stable across machines)
    label: int      # class index, or -1 when unlabelled
    key: str        # WebDataset sample key: unique, stable, no dots


@dataclass(frozen=True)
class Source:
    root: Path                 # the folder that holds the images (SRC/SPLIT)
    items: list[Item]
    folders: list[str]         # class folders, sorted ("" for a flat folder)
    num_classes: int
    class_names: list[str]     # names by class index (the whole label space)
    index: dict[str, int]      # class folder -> class index
    rejected: list[dict]       # {"path", "reason"} for files that can't be items

    def digest(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.rel}\t{it.label}\n".encode())
        return h.hexdigest()[:16]


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")


def make_key(rel: str) -> str:
    """'n01440764/n01440764_123.JPEG' -> 'n01440764/n01440764_123_JPEG'.

    WebDataset splits a member name at the first dot after the last '/', so keys must not
    contain dots; other unusual characters are replaced too, and ``sources`` checks the
    result is still unique."""
    return _UNSAFE.sub("_", rel)


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def list_source(src: str | Path, split: str | None = None, classes_file: str | Path | None = None) -> Source:
    """List ``src/split`` (or ``src``): class folders of images, or a flat folder of
    unlabelled images.  Files are sorted so the plan, and therefore the shards, depend
    only on the folder's content."""
    root = Path(src) / split if split else Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} does not exist"
                                + (f" (expected SRC/<split>/<class>/<image> with split {split!r})" if split else ""))
    root = root.resolve()
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items: list[Item] = []
    rejected: list[dict] = []
    if subdirs:
        index, num_classes, names = class_index(subdirs, classes_file)
        for p in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
            rejected.append({"path": str(p), "reason": "file outside the class folders (label unknown)"})
        for folder in subdirs:
            for p in _visible_files(root / folder):
                rel = p.relative_to(root).as_posix()
                items.append(Item(p, rel, index[folder], make_key(rel)))
    else:
        index, num_classes, names = {}, 0, []
        for p in _visible_files(root):
            rel = p.relative_to(root).as_posix()
            items.append(Item(p, rel, UNLABELLED, make_key(rel)))
    seen: dict[str, str] = {}
    for it in items:
        if it.key in seen:
            raise ValueError(f"files {seen[it.key]!r} and {it.rel!r} map to the same sample key {it.key!r}; rename one")
        seen[it.key] = it.rel
    return Source(root, items, subdirs, num_classes, names, index, rejected)
