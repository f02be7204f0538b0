"""Find and check the reference folder of a split-layout setting (format: :mod:`pipeline.shards`).

``check_reference("shards/train/jpeg-10")`` returns ``None`` for a self-contained folder
(pair layout, or ``lossless`` itself) and otherwise a :class:`Pairing`: the reference
folder (``shards/train/lossless``) and the (setting tar, reference tar) of every shard.
Any mismatch raises :class:`PairingError`, one line naming both folders: a missing
reference or manifest, another split, another plan (source, order, seed, shard size,
limit), other shard names, or keys that are not the reference's keys of that shard in the
same order.  Readers (the trainer, ``trainer.evaluation``, the teacher cache) call it before
pairing samples by key; ``python -m pipeline check FOLDER`` runs it from the shell.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from .bounded import read_json
from .limits import open_regular_file
from .manifest import Manifest, ManifestError
from .setting import Setting, SettingError
from .shards import REFERENCE, SPLIT, record_path, shard_index


class PairingError(ValueError):
    """A split-layout setting that does not pair with its reference (names both folders)."""


@dataclass(frozen=True)
class Pairing:
    folder: Path                        # the split-layout setting
    reference: Path                     # its reference folder (lossless)
    shards: list[tuple[Path, Path]]     # (setting tar, reference tar), by shard index
    exact: bool                         # the same keys in every shard (no codec failure)
    unpaired: int                       # reference samples without a bitstream (codec failures)


def reference_folder(folder: str | Path) -> Path | None:
    """The reference folder a setting folder's manifest names, or None when self-contained.
    The name comes from a file: it must parse as a setting name (no path in it)."""
    folder = Path(folder)
    m = Manifest.load(folder)
    if m.get("layout", "pair") != SPLIT:
        return None
    ref = m.get("reference")
    try:
        name = Setting.parse(ref.get("setting", "") if isinstance(ref, dict) else "").name
    except SettingError:
        raise PairingError(f"{folder}: split layout without a valid reference setting ({ref!r})") from None
    if name != REFERENCE:
        raise PairingError(f"{folder}: reference setting {name!r} is not {REFERENCE!r}")
    return folder.absolute().parent / name


def _keys_of_record(folder: Path, index: int) -> list[str] | None:
    try:
        return [s["key"] for s in read_json(record_path(folder, index), "shard record")["samples"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _keys_of_tar(path: Path) -> list[str]:
    keys: list[str] = []
    with open_regular_file(path, "shard") as f, tarfile.open(fileobj=f) as tar:
        for member in tar:
            head, _, base = member.name.rpartition("/")      # WebDataset's rule: the key ends at the
            key = (head + "/" if head else "") + base.split(".", 1)[0]   # first dot of the base name
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


def _subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(k in it for k in small)


def check_reference(folder: str | Path, deep: bool = False) -> Pairing | None:
    """Check a setting folder against its reference; ``deep`` also reads every tar's member
    names (no decoding) instead of trusting the records."""
    folder = Path(folder)
    ref_dir = reference_folder(folder)
    if ref_dir is None:
        return None
    both = f"{folder} and its reference {ref_dir}"
    m = Manifest.load(folder)
    try:
        rm = Manifest.load(ref_dir)
    except ManifestError:
        raise PairingError(f"{folder} stores its clean crops in {ref_dir}, which has no manifest: build it "
                           f"(python -m pipeline shards --layout split ...)") from None
    if rm.get("layout", "pair") == SPLIT or rm.get("codec") != REFERENCE:
        raise PairingError(f"{both}: the reference is not a {REFERENCE} folder")
    if rm.split != m.split:
        raise PairingError(f"{both} are of different splits ({m.split!r} and {rm.split!r})")
    if rm.get("plan_id") != m.get("plan_id"):
        diff = [k for k in ("source_digest", "order", "seed", "shard_size", "limit") if rm.get(k) != m.get(k)]
        what = ", ".join(f"{k} {m.get(k)!r} vs {rm.get(k)!r}" for k in diff) or "plan ids differ"
        raise PairingError(f"{both} were built from different plans ({what}); rebuild {folder} "
                           "(python -m pipeline shards --layout split ...)")
    names, ref_names = list(m.shard_counts), list(rm.shard_counts)
    if names != ref_names:
        raise PairingError(f"{both} have different shards ({len(names)} vs {len(ref_names)})")
    exact, unpaired = True, 0
    shards = []
    for entry, ref_entry in zip(m["shards"], rm["shards"]):
        name = entry["name"]
        tar, ref_tar = folder / name, ref_dir / name
        for t in (tar, ref_tar):
            if not t.is_file():
                raise PairingError(f"{both}: {t} is missing")
        same = entry.get("keys") is not None and entry.get("keys") == ref_entry.get("keys")
        if deep or not same:
            i = shard_index(name)
            keys = _keys_of_tar(tar) if deep else _keys_of_record(folder, i)
            ref_keys = _keys_of_tar(ref_tar) if deep else _keys_of_record(ref_dir, i)
            if keys is None or ref_keys is None:
                raise PairingError(f"{both}: the keys of {name} differ and the records to compare them are missing")
            if keys != ref_keys:
                if not _subsequence(keys, ref_keys):
                    extra = next((k for k in keys if k not in set(ref_keys)), None)
                    raise PairingError(f"{both}: {name} holds keys the reference's {name} does not hold in the same "
                                       f"order (first: {extra!r})")
                exact = False
                unpaired += len(ref_keys) - len(keys)
        shards.append((tar, ref_tar))
    return Pairing(folder, ref_dir, shards, exact, unpaired)
