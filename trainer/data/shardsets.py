"""The shards of a setting: a pattern's tars grouped by folder, each folder read through its
:class:`pipeline.manifest.Manifest` (split layout: paired with its reference folder)."""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from braceexpand import braceexpand

from pipeline.manifest import Manifest, digest as manifest_digest
from pipeline.setting import Setting

from ..clitools import UserError
from .completeness import check_counts, missing_listed
from ..losses import LabelError

log = logging.getLogger("trainer.data")


class ShardError(UserError, FileNotFoundError):
    """A shard pattern that matches nothing (the message names it)."""


@dataclass
class ShardSet:
    """The selected shards of one setting folder and the folder's manifest.

    The setting itself (name, codec, q) is the manifest's :class:`pipeline.setting.Setting`;
    ``count`` is the number of samples the manifest lists for the selected shards.  A
    split-layout setting (its samples hold no clean crop) has its ``reference``: the
    ShardSet of the shards of the same names in the split's ``lossless`` folder, checked by
    :func:`pipeline.layout.check_reference` (the loaders join it by key when the clean crop
    is needed)."""
    folder: str
    shards: list[str]
    manifest: Manifest
    count: int
    reference: "ShardSet | None" = None
    missing: list[str] = field(default_factory=list)   # listed and selected, not on disk (read as lost)

    @property
    def setting(self) -> Setting:
        return self.manifest.setting

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def codec(self) -> str:
        return self.manifest.codec

    @property
    def q(self):
        return self.manifest.q

    @property
    def lossless(self) -> bool:
        return self.setting.lossless

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes or 1000

    @property
    def max_label(self) -> int | None:
        """The largest class index the manifest says its labels use (None: unknown)."""
        return self.manifest.max_label

    def identity(self) -> str:
        """What identifies the data these shards hold: their manifest's content (without what
        changes on every rebuild of the same bytes; it lists each tar's SHA-256) and the name,
        size and mtime of every selected tar (a tar replaced or edited in place behind its
        manifest's back gets another identity).  The teacher and evaluation caches key by it."""
        tars = []
        for path in sorted(self.shards):
            st = os.stat(path)
            tars.append([os.path.basename(path), st.st_size, st.st_mtime_ns])
        text = json.dumps({"manifest": manifest_digest(self.manifest), "tars": tars})
        return hashlib.sha256(text.encode()).hexdigest()

    def expected(self) -> dict[str, int]:
        """Shard path -> sample count, for the selected shards the manifest lists."""
        counts = self.manifest.shard_counts
        return {s: counts[os.path.basename(s)] for s in self.shards + self.missing if os.path.basename(s) in counts}


def expand_shards(patterns: str | list[str]) -> list[str]:
    """Globs / brace patterns (``shard-{000000..000009}.tar``) / files / folders -> sorted
    unique .tar paths (a folder means its *.tar).  Raises ShardError when nothing matches."""
    if isinstance(patterns, str):
        patterns = [patterns]
    found: list[str] = []
    for pat in patterns:
        for p in braceexpand(str(pat)):
            if os.path.isdir(p):
                found.extend(glob.glob(os.path.join(p, "*.tar")))
            elif any(c in p for c in "*?["):
                found.extend(glob.glob(p))
            elif os.path.exists(p):
                found.append(p)
            else:
                raise ShardError(f"shard {p} does not exist")
    found = sorted(set(os.path.abspath(f) for f in found if f.endswith(".tar") and os.path.isfile(f)))
    if not found:
        raise ShardError(f"no .tar shards match {' '.join(map(str, patterns))}")
    return found


def _count(m: Manifest, shards: list[str]) -> int:
    counts = m.shard_counts
    names = [os.path.basename(s) for s in shards]
    return sum(counts[n] for n in names) if counts and all(n in counts for n in names) else m.count


def _first_seen(patterns: list[str]) -> dict[str, int]:
    """Folder -> the position of its first shard in the patterns as given (brace alternatives in
    their written order)."""
    order: dict[str, int] = {}
    for pat in patterns:
        for p in braceexpand(str(pat)):
            hits = glob.glob(os.path.join(p, "*.tar")) if os.path.isdir(p) else sorted(glob.glob(p))
            for h in hits:
                order.setdefault(os.path.dirname(os.path.abspath(h)), len(order))
    return order


def group_shards(patterns: str | list[str], in_order: bool = False) -> list[ShardSet]:
    """Expand shard patterns and group the shards by folder (one folder = one setting), by
    folder name, or (``in_order``) in the order the patterns name them;
    read and check each folder's manifest.json, and pair a split-layout setting with its
    reference (:func:`pipeline.layout.check_reference`: a missing or mismatched reference is
    a one-line :class:`pipeline.layout.PairingError` naming both folders)."""
    from pipeline.layout import check_reference

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    by_dir: dict[str, list[str]] = {}
    for s in expand_shards(patterns):
        by_dir.setdefault(os.path.dirname(s), []).append(s)
    folders = sorted(by_dir)
    if in_order:
        seen = _first_seen([patterns] if isinstance(patterns, str) else list(patterns))
        folders.sort(key=lambda d: seen.get(d, len(seen)))
    out = []
    for d in folders:
        shards = by_dir[d]
        m = Manifest.load(d)
        pairing = check_reference(d)
        reference = None
        if pairing is not None:
            ref_dir = folder_key(pairing.reference)
            ref_shards = [os.path.join(ref_dir, os.path.basename(s)) for s in shards]
            ref_m = Manifest.load(ref_dir)
            reference = ShardSet(ref_dir, ref_shards, ref_m, _count(ref_m, ref_shards))
        check_counts(d, m.shard_counts, shards)
        missing = missing_listed(patterns, d, list(m.shard_counts), shards)
        out.append(ShardSet(d, shards, m, _count(m, shards + missing), reference, missing))
    return out


def check_classes(sets: list[ShardSet], n_outputs: int, what: str = "the model") -> None:
    """Refuse labels the model has no output for; warn when the class counts differ."""
    for s in sets:
        top = s.max_label
        if top is not None and top >= n_outputs:
            raise LabelError(f"{s.folder}: labels go up to {top} but {what} has {n_outputs} outputs "
                             "(--num-classes)")
        n = s.manifest.num_classes
        if n is not None and n != n_outputs:
            log.warning("%s: the shards have %d classes, %s %d outputs: scores are over all %d outputs "
                        "(top1_present restricts the arg-max to the classes present)", s.name, n, what,
                        n_outputs, n_outputs)


def describe(sets: list[ShardSet]) -> str:
    return ", ".join(f"{s.name} ({s.count} samples, {len(s.shards)} shards)" for s in sets)


def folder_key(path: str | os.PathLike) -> str:
    """How caches and samples name a setting folder (absolute path)."""
    return os.path.abspath(Path(path))
