"""Helpers shared by the trainer tests (tiny shards built with the real pipeline)."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import make_image_folder

CLASSES = ("n01440764", "n02102040")


def build_shards(root: Path, codecs=(("jpeg", 10), ("lossless", None)), per_class: int = 4,
                 shard_size: int = 2, splits=("train",)) -> Path:
    """root/src (synthetic photos) -> root/shards/<split>/<setting>/ ; returns root/shards."""
    from pipeline.build import build_setting
    for split in splits:
        make_image_folder(root / "src", classes=CLASSES, per_class=per_class, size=(260, 240), split=split,
                          seed=0 if split == "train" else 100)
        for codec, q in codecs:
            build_setting(src=root / "src", split=split, codec=codec, q=q, out=root / "shards",
                          shard_size=shard_size, jobs=1, progress=False)
    return root / "shards"


def small_threads():
    torch.set_num_threads(1)
