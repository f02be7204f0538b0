"""One label space per run: the training shards, the validation shards and the checkpoint
must give every class index the same meaning.

A manifest names its label space (``label_space``, :func:`pipeline.classes.label_space_id`,
a digest of the class names in index order) and a run records it in its checkpoint (``args``).
Two different ids are an error: ``train/{cat,dog,fox}`` and ``val/{cat,fox}`` label fox 2 and
1, and every val fox would be scored as a dog.  The manifests' ``class_index`` is compared
too (a class folder with two indices is an error) and so is ``num_classes`` between training
sets, which catches the same mistakes in manifests written before the id existed; those get a
warning that the id could not be checked, not an error.
"""
from __future__ import annotations

import logging
from typing import Iterable

from .losses import LabelError

log = logging.getLogger(__name__)


class LabelSpaceMismatch(LabelError):
    """Shards (or shards and a model) that give class indices different meanings."""


def _id(s) -> str | None:
    value = s.manifest.get("label_space")
    return value if isinstance(value, str) else None


def _indices(s) -> dict[str, int]:
    index = s.manifest.get("class_index")
    return index if isinstance(index, dict) else {}


def check(sets: Iterable, model_space: str | None = None, model: str | None = None,
          same_count: Iterable = ()) -> str | None:
    """Refuse shard sets (and a model recording ``model_space``) of different label spaces;
    return the common id (None when no manifest has one).  ``same_count``: sets that must
    also agree on ``num_classes`` (the training sets: one head is built for them all)."""
    sets = list(sets)
    first: tuple[str, str] | None = (model_space, f"the model {model}") if model_space else None
    old = [s.folder for s in sets if _id(s) is None]
    for s in sets:
        sid = _id(s)
        if sid is None:
            continue
        if first is None:
            first = (sid, s.folder)
        elif sid != first[0]:
            raise LabelSpaceMismatch(f"{s.folder} and {first[1]} have different label spaces ({sid} and {first[0]}): "
                                     "the same class index would mean different classes; build them with the same "
                                     "class folders or --classes table")
    seen: dict[str, tuple[int, str]] = {}
    for s in sets:
        for folder, index in _indices(s).items():
            if folder in seen and seen[folder][0] != index:
                raise LabelSpaceMismatch(f"class {folder!r} is index {index} in {s.folder} but {seen[folder][0]} in "
                                         f"{seen[folder][1]}: the label spaces differ")
            seen.setdefault(folder, (index, s.folder))
    counts = {}
    for s in same_count:
        n = s.manifest.get("num_classes")
        if isinstance(n, int):
            counts.setdefault(n, s.folder)
    if len(counts) > 1:
        (n1, f1), (n2, f2) = list(counts.items())[:2]
        raise LabelSpaceMismatch(f"{f1} has {n1} classes and {f2} {n2}: shards of one run must share a label space")
    if old and (first is not None or len(sets) > 1 or model_space):
        log.warning("%s: no label-space id in the manifest (built by an older pipeline): the label spaces were "
                    "compared by class folders only", ", ".join(old[:3]) + (" ..." if len(old) > 3 else ""))
    return first[0] if first is not None else None


def of_model(meta: dict) -> str | None:
    """The label-space id a checkpoint recorded (None for plain weights and older runs)."""
    args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    value = args.get("label_space")
    return value if isinstance(value, str) else None
