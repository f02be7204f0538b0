"""Whether the images a model was chosen on (best epoch, learning rate, routing table) are
images it is scored on, by content, not by shard build.

An image's identity is its crop's ``crop_sha256`` (``pipeline.shards.crop_id``: the pixels of
the resized, centre-cropped photo), which the pipeline writes into every setting folder's
``manifest.csv``.  It is the same for the same photo and crop in every setting, every shard
layout and every rebuild, so a selection split that shares photos with the scored split is
found even when the two were built into different shards.

    from trainer.selection import check_disjoint, image_ids
    check_disjoint(image_ids(selection_folder), image_ids(scored_folder), "routing table")

``checkpoint.selection_record`` stores the identities of the images a checkpoint was chosen
on, and ``trainer.evaluation`` flags a row whose scored images share one of them
(``selected_on_scored_data``).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable

from pipeline.bounded import BoundedReadError, read_text
from trainer.clitools import UserError

#: the manifest.csv column holding an image's content identity
IDENTITY = "crop_sha256"


class SelectionLeak(UserError, ValueError):
    """The images something was chosen on share photos with the images it is scored on."""


def ids_by_key(folder: str | os.PathLike, shards: Iterable[str] | None = None) -> dict[str, str] | None:
    """Sample key -> content identity of a setting folder's images (of the shard files ``shards``
    only, by base name, when given); None when its manifest.csv does not record them (shards
    built before the pipeline wrote ``crop_sha256``) or is missing."""
    path = Path(folder) / "manifest.csv"
    try:
        text = read_text(path, "manifest.csv", max_bytes=256 << 20)
    except (OSError, BoundedReadError):
        return None
    reader = csv.DictReader(io.StringIO(text))
    if IDENTITY not in (reader.fieldnames or ()):
        return None
    names = None if shards is None else {os.path.basename(str(s)) for s in shards}
    return {row.get("key", ""): row[IDENTITY] for row in reader
            if row.get(IDENTITY) and (names is None or row.get("shard") in names)}


def image_ids(folder: str | os.PathLike, shards: Iterable[str] | None = None) -> set[str] | None:
    """The content identities of a setting folder's images (see :func:`ids_by_key`)."""
    ids = ids_by_key(folder, shards)
    return None if ids is None else set(ids.values())


def shared(selection_ids: Iterable[str], scored_ids: Iterable[str]) -> set[str]:
    """The identities in both."""
    return set(selection_ids) & set(scored_ids)


def check_disjoint(selection_ids: Iterable[str] | None, scored_ids: Iterable[str] | None, what: str = "") -> None:
    """A one-line :class:`SelectionLeak` when the images something was chosen on (``selection_ids``)
    share a photo with the images it is scored on (``scored_ids``); also when either is None
    (unknown: the shards do not record identities), since a leak could not be ruled out."""
    prefix = f"{what}: " if what else ""
    if selection_ids is None or scored_ids is None:
        raise SelectionLeak(f"{prefix}the shards do not record the images' identities ({IDENTITY} in "
                            "manifest.csv); rebuild them with this version of the pipeline to check the "
                            "selection and scored images are disjoint")
    common = shared(selection_ids, scored_ids)
    if common:
        raise SelectionLeak(f"{prefix}{len(common)} image(s) chosen on are also scored (e.g. crop "
                            f"{sorted(common)[0]}); choose on images disjoint from the scored ones")
