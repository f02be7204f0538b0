"""Class groups of an evaluation: named subsets of the classes, scored apart
(``trainer.evaluation --group A=n01440764,n02102040 --group B=... --classes FILE``).

A group is ``NAME=CLASS,CLASS,...`` (commas or spaces).  A class is named by its class folder
(as the shards' manifest lists it in ``class_index``, e.g. an ImageNet wnid), by an ImageNet
wnid when the shards use the ImageNet-1k label space, or by its class index.  A ``--classes``
file holds either one group per line (``NAME=...`` or ``NAME: ...``) or one class per line,
which makes one group named after the file (``held_out.txt`` -> ``held_out``); ``#`` starts a
comment.  Names are checked here, once; classes are resolved against each setting's manifest
(:func:`resolve`), so a group may name classes that one setting's data does not hold (its
row then counts the samples that are there).
"""
from __future__ import annotations

import re
from pathlib import Path

from .clitools import UserError

NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")


class GroupError(UserError, ValueError):
    """A class group that cannot be used (the message names it and the reason)."""


def _split(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def parse_group(text: str, where: str = "--group") -> tuple[str, list[str]]:
    """``"A=n01440764,n02102040"`` -> ``("A", ["n01440764", "n02102040"])``."""
    name, sep, rest = str(text).partition("=")
    if not sep:
        name, sep, rest = str(text).partition(":")
    name = name.strip()
    if not sep:
        raise GroupError(f"{where} {text!r}: write NAME=CLASS,CLASS,...")
    return check_group(name, _split(rest), where)


def check_group(name: str, classes, where: str = "--group") -> tuple[str, list[str]]:
    if not isinstance(name, str) or not NAME.match(name):
        raise GroupError(f"{where}: group name {name!r} must be 1-64 letters, digits or _ . + -")
    if isinstance(classes, (str, int)):
        classes = [classes]
    items = [str(c).strip() for c in (classes or [])]
    if not items or any(not c for c in items):
        raise GroupError(f"{where}: group {name!r} names no classes")
    if len(set(items)) != len(items):
        dup = sorted({c for c in items if items.count(c) > 1})
        raise GroupError(f"{where}: group {name!r} lists {', '.join(dup)} twice")
    return name, items


#: a groups file larger than this is not one
GROUPS_MAX_BYTES = 16 << 20


def read_classes_file(path: str | Path) -> dict[str, list[str]]:
    """The groups of a ``--classes`` file (see the module docstring)."""
    from pipeline.bounded import BoundedReadError, read_text
    p = Path(path)
    try:
        text = read_text(p, "class groups file", max_bytes=GROUPS_MAX_BYTES)
    except FileNotFoundError:
        raise GroupError(f"--classes {p}: no such file") from None
    except BoundedReadError as exc:
        reason = str(exc).removeprefix(f"{p}: ")
        raise GroupError(f"--classes {p}: not a readable text file ({reason})") from None
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise GroupError(f"--classes {p}: no classes in it")
    named = [("=" in line or ":" in line) for line in lines]
    if all(named):
        return merge_groups([parse_group(line, f"--classes {p}") for line in lines], f"--classes {p}")
    if any(named):
        raise GroupError(f"--classes {p}: mixes NAME=... lines with plain class lines; use one form")
    name, classes = check_group(p.stem, [c for line in lines for c in _split(line)], f"--classes {p}")
    return {name: classes}


def merge_groups(pairs, where: str = "--group") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, classes in pairs:
        if name in out:
            raise GroupError(f"{where}: group {name!r} is defined twice")
        out[name] = classes
    return out


def normalise(groups, class_files=()) -> dict[str, list[str]]:
    """Groups from the API (a dict NAME -> classes, or ``NAME=...`` strings) and ``--classes``
    files -> one checked dict."""
    pairs: list[tuple[str, list[str]]] = []
    if isinstance(groups, dict):
        pairs += [check_group(k, v) for k, v in groups.items()]
    elif isinstance(groups, (list, tuple)):
        pairs += [parse_group(g) for g in groups]
    elif groups:
        raise GroupError(f"--group: expected NAME=CLASS,... entries, got {groups!r}")
    for f in class_files or ():
        pairs += list(read_classes_file(f).items())
    return merge_groups(pairs)


def resolve(groups: dict[str, list[str]], class_index: dict | None, num_classes: int | None,
            where: str) -> dict[str, list[int]]:
    """Class names -> indices for the shards of one setting (``where`` names them).

    A name is looked up among the manifest's class folders, then as an ImageNet wnid (only
    when the label space is ImageNet-1k's 1000 classes), then read as an index."""
    from pipeline.classes import WNID, wnid_to_index

    index = {str(k): v for k, v in (class_index or {}).items() if isinstance(v, int)}
    out: dict[str, list[int]] = {}
    for name, classes in groups.items():
        ids = []
        for c in classes:
            if c in index:
                ids.append(index[c])
            elif WNID.match(c) and num_classes == 1000 and c in wnid_to_index():
                ids.append(wnid_to_index()[c])
            elif c.isascii() and c.isdigit() and len(c) <= 9 and (num_classes is None or int(c) < num_classes):
                ids.append(int(c))
            else:
                known = ", ".join(sorted(index)[:10]) + (" ..." if len(index) > 10 else "")
                raise GroupError(f"group {name!r}: {c!r} is not a class of {where}"
                                 + (f" (its class folders: {known})" if known else "")
                                 + (f"; indices go up to {num_classes - 1}" if num_classes else ""))
        if len(set(ids)) != len(ids):
            raise GroupError(f"group {name!r}: two of its names are the same class in {where}")
        out[name] = sorted(ids)
    return out
