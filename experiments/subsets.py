"""Class-balanced, seeded subsets of an ImageNet-style source, as folders of symbolic links.

    make_subset("../shared/imagenette", "runs/experiments/src/imagenette-300-100",
                {"train": 300, "val": 100}, classes=None, seed=0)

The subset is ``DEST/<split>/<class>/<file>`` with one link per chosen image: the pipeline
reads it like any source, the class folders keep their names (so ImageNet wnids keep their
ImageNet-1k indices as labels) and nothing is copied.  From each class folder of
``SRC/<split>``, ``per_class[split]`` images are drawn with a generator seeded by
(seed, split, class): the draw of one class does not depend on which other classes are
chosen, so the A-classes of a retention subset are exactly the images the 10-class
subset holds for them.  ``DEST/subset.json`` records the source, the parameters and the
chosen files.  A second call with the same arguments changes nothing (the links keep their
modification times, so the pipeline's plan and shards are reused); a call with other
arguments for an existing DEST is refused rather than silently replacing the selection.
``exclude`` draws from the images another subset did not take (the selection split of the
experiments: train images outside the train subset), and :func:`check_disjoint` checks it.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from pipeline.atomic import atomic_write_json
from trainer.clitools import UserError

RECORD = "subset.json"


class SubsetError(UserError, ValueError):
    """A subset that cannot be made (the message names the folder and the reason)."""


def choose(files: list[str], n: int | None, seed: int, split: str, cls: str) -> list[str]:
    """``n`` of ``files`` (all when n is None or larger), drawn with a generator seeded by
    (seed, split, class); returned in sorted order."""
    files = sorted(files)
    if n is None or n >= len(files):
        return files
    return sorted(random.Random(f"{seed}/{split}/{cls}").sample(files, n))


def make_subset(src: str | Path, dest: str | Path, per_class: dict[str, int | None],
                classes: list[str] | None = None, seed: int = 0, exclude: str | Path | None = None) -> Path:
    """Make (or check and reuse) the subset folder ``dest``; returns it.  ``exclude``: another
    subset folder of the same source whose images are not drawn (a selection split carved
    from the train images beside the train subset); the two are checked disjoint."""
    src, dest = Path(src).resolve(), Path(dest)
    taken = _record(Path(exclude))["files"] if exclude is not None else {}
    selection: dict[str, dict[str, list[str]]] = {}
    for split, n in per_class.items():
        root = src / split
        if not root.is_dir():
            raise SubsetError(f"{root}: no such folder (expected SRC/<split>/<class>/<image>)")
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        wanted = folders if classes is None else list(classes)
        missing = sorted(set(wanted) - set(folders))
        if missing:
            raise SubsetError(f"{root}: no class folder(s) {', '.join(missing)}")
        selection[split] = {}
        for cls in sorted(wanted):
            files = [f.name for f in (root / cls).iterdir() if f.is_file() and not f.name.startswith(".")]
            left = set((taken.get(split) or {}).get(cls) or ())
            selection[split][cls] = choose([f for f in files if f not in left], n, seed, split, cls)
    record = {"source": str(src), "per_class": per_class, "classes": classes, "seed": seed, "files": selection}
    if exclude is not None:
        record["disjoint_from"] = Path(exclude).name
    path = dest / RECORD
    if path.exists():
        old = _record(dest)
        if old != record:
            raise SubsetError(f"{dest} holds another subset (source, sizes, classes or seed differ); "
                              "remove it or choose another folder")
    for split, by_class in selection.items():
        for cls, files in by_class.items():
            folder = dest / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for name in files:
                link = folder / name
                target = src / split / cls / name
                if link.is_symlink() and os.readlink(link) == str(target):
                    continue
                if link.exists() or link.is_symlink():
                    link.unlink()
                link.symlink_to(target)
    if not path.exists():
        atomic_write_json(path, record)
    if exclude is not None:
        check_disjoint(dest, exclude)
    return dest


def _record(dest: Path) -> dict:
    path = dest / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SubsetError(f"{dest}: not a subset folder (no {RECORD})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubsetError(f"{path}: not a readable subset record ({exc}); remove {dest} to remake it") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise SubsetError(f"{path}: not a subset record (no files); remove {dest} to remake it")
    return record


def images(dest: str | Path) -> set[str]:
    """The source images a subset folder holds: ``<source>/<split>/<class>/<file>`` paths."""
    record = _record(Path(dest))
    return {f"{record.get('source')}/{split}/{cls}/{name}" for split, by_class in record["files"].items()
            for cls, names in by_class.items() for name in names}


def check_disjoint(*dests: str | Path) -> None:
    """A one-line error when two of these subset folders hold the same source image (a model
    would then be trained, chosen or scored twice on it)."""
    seen: dict[str, Path] = {}
    for dest in map(Path, dests):
        for image in sorted(images(dest)):
            if image in seen:
                raise SubsetError(f"{dest} and {seen[image]} share {image}: the subsets must be disjoint")
            seen[image] = dest
