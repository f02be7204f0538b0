"""Which files make up a split, in a fixed order, with their labels, stable keys and fingerprints.

A source folder is walked once, in sorted order.  Nothing in it is dropped silently: files
that cannot become samples (a dangling or looping symbolic link, a FIFO, a file outside the
class folders, a second file that maps to an existing key) are listed in ``rejected`` with
the reason and end up in the manifest's ``failed`` list.

File names are bytes on Linux.  A name that is not valid UTF-8 (``b"bad\\xff.JPEG"``) is still
processed: its ``rel`` (and every path written to a record, a manifest or a log) spells the
offending bytes as ``\\xNN`` (Python's ``backslashreplace``), and its key as ``_xNN``
(``bad_xff_JPEG``), so records stay valid UTF-8 JSON.  ``Item.path`` keeps the real name.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .classes import class_index

UNLABELLED = -1


def display(path: str | os.PathLike) -> str:
    """A path as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def safe_text(text: str) -> str:
    """Any str (for example an exception message that quotes a non-UTF-8 file name) as
    valid UTF-8 text, with the same ``\\xNN`` spelling as :func:`display`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Item:
    path: Path      # the source file as found (a link stays a link: its target is read)
    rel: str        # path relative to the split folder, "/"-separated, valid UTF-8 (see display)
    label: int      # class index, or -1 when unlabelled
    key: str        # WebDataset sample key: unique, stable, no dots
    size: int = 0   # fingerprint: a replaced or repaired file changes the plan of its shard
    mtime_ns: int = 0

    def fingerprint(self) -> str:
        return f"{self.rel}\t{self.label}\t{self.key}\t{self.size}\t{self.mtime_ns}"


@dataclass(frozen=True)
class Source:
    root: Path                 # the folder that holds the images (SRC/SPLIT), resolved
    items: list[Item]          # sorted by class folder, then path
    folders: list[str]         # class folders, sorted (empty for a flat folder)
    num_classes: int
    class_names: list[str]     # names by class index (the whole label space)
    index: dict[str, int]      # class folder -> class index
    rejected: list[dict]       # {"path", "reason"} for files that can't be items

    def digest(self) -> str:
        """Identity of the listing: paths, labels, sizes and modification times."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(it.fingerprint().encode() + b"\n")
        return h.hexdigest()[:16]


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")


def make_key(rel: str) -> str:
    """'n01440764/n01440764_123.JPEG' -> 'n01440764/n01440764_123_JPEG'.

    WebDataset splits a member name at the first dot after the last '/', so keys must not
    contain dots; other unusual characters are replaced too (a non-UTF-8 byte, spelled
    ``\\xff`` in ``rel``, becomes ``_xff``), and ``list_source`` keeps keys unique."""
    return _UNSAFE.sub("_", rel)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _classify(p: Path) -> tuple[str, os.stat_result | None, str]:
    """("dir" | "file" | "bad", stat of the target, reason when bad).  Links are followed."""
    try:
        st = p.stat()
    except FileNotFoundError:
        target = display(os.readlink(p)) if p.is_symlink() else "?"
        return "bad", None, f"dangling symbolic link (its target {target} does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "bad", None, "symbolic link loop"
        return "bad", None, f"cannot stat: {safe_text(exc.strerror or str(exc))}"
    if stat.S_ISDIR(st.st_mode):
        return "dir", st, ""
    if stat.S_ISREG(st.st_mode):
        return "file", st, ""
    # never open a FIFO or a device: reading it would block the build or never end
    return "bad", st, f"{_kind(st.st_mode)}, not an image file"


def _entries(folder: Path, rejected: list[dict]) -> list[Path]:
    """Visible entries of a folder, sorted by name (hidden names, ".*", are skipped)."""
    try:
        names = sorted(e.name for e in os.scandir(folder))
    except OSError as exc:
        rejected.append({"path": display(folder), "reason": f"cannot list folder: {safe_text(exc.strerror or str(exc))}"})
        return []
    return [folder / n for n in names if not n.startswith(".")]


def _walk(folder: Path, rejected: list[dict], ancestors: frozenset = frozenset()) -> list[tuple[Path, os.stat_result]]:
    """Regular files under ``folder`` (links followed), sorted; every entry that is neither a
    regular file nor a folder goes to ``rejected`` with the reason."""
    st = folder.stat()
    ident = (st.st_dev, st.st_ino)
    if ident in ancestors:
        rejected.append({"path": display(folder), "reason": "symbolic link to one of its own parent folders "
                                                            "(a link loop); not followed"})
        return []
    ancestors = ancestors | {ident}
    out = []
    for p in _entries(folder, rejected):
        kind, st, reason = _classify(p)
        if kind == "dir":
            out.extend(_walk(p, rejected, ancestors))
        elif kind == "file":
            out.append((p, st))
        else:
            rejected.append({"path": display(p), "reason": reason})
    return out


def list_source(src: str | Path, split: str | None = None, classes_file: str | Path | None = None) -> Source:
    """List ``src/split`` (or ``src``): class folders of images, or a flat folder of
    unlabelled images.  Files are sorted so the listing depends only on the folder's content."""
    root = Path(src) / split if split else Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {display(root)} does not exist"
                                + (f" (expected SRC/<split>/<class>/<image> with split {split!r})" if split else ""))
    root = root.resolve()
    rejected: list[dict] = []
    top = [(p, *_classify(p)) for p in _entries(root, rejected)]
    folders = [p for p, kind, _st, _r in top if kind == "dir"]
    found: list[tuple[Path, os.stat_result, int]] = []
    if folders:
        names = [display(p.name) for p in folders]
        index, num_classes, class_names = class_index(names, classes_file, where=display(root))
        for p, kind, _st, reason in top:
            if kind == "file":
                rejected.append({"path": display(p), "reason": "file outside the class folders (label unknown)"})
            elif kind == "bad":
                rejected.append({"path": display(p), "reason": reason})
        for p, name in zip(folders, names):
            found += [(f, st, index[name]) for f, st in _walk(p, rejected, frozenset({_ident(root)}))]
    else:
        names, index, num_classes, class_names = [], {}, 0, []
        found = [(p, st, UNLABELLED) for p, st in _walk(root, rejected)]
    items: list[Item] = []
    seen: dict[str, str] = {}
    for p, st, label in found:
        rel = display(p.relative_to(root).as_posix())
        key = make_key(rel)
        if key in seen:   # e.g. 'a b.jpg' and 'a_b.jpg': the second one is refused, the build goes on
            rejected.append({"path": display(p), "reason": f"its sample key {key!r} is already used by {seen[key]!r}; "
                                                            "rename one of the two"})
            continue
        seen[key] = rel
        items.append(Item(p, rel, label, key, st.st_size, st.st_mtime_ns))
    return Source(root, items, names, num_classes, class_names, index, rejected)


def _ident(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_dev, st.st_ino
