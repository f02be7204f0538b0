"""Shared pieces of the adversarial suite: tiny shard folders built once, and the checks
every hostile input shares (exit status, one error line, no traceback)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import synthetic_rgb

torch.set_num_threads(1)
ARCH = "mobilenet_v3_small"


def make_split(src: Path, split: str, classes, per_class: int = 2, size=(240, 232), seed: int = 0) -> None:
    for ci, c in enumerate(classes):
        d = src / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(synthetic_rgb(size[1], size[0], seed=seed + 10 * ci + i)).save(d / f"{c}_{i}.jpg",
                                                                                           quality=92)


def build(src: Path, split: str, out: Path, shard_size: int = 2, q: int = 10, **kw) -> Path:
    from pipeline.build import build_setting
    build_setting(src=src, split=split, codec="jpeg", q=q, out=out, shard_size=shard_size, jobs=1,
                  progress=False, **kw)
    return out / split / f"jpeg-{q}"


@pytest.fixture(scope="session")
def animals(tmp_path_factory) -> dict[str, Path]:
    """train/{cat,dog,fox} and val/{cat,fox} (folder-order labels: fox is 2 in train, 1 in val),
    val/{cat,dog,fox} (the same label space as train), and 2-class ImageNet-wnid shards."""
    root = tmp_path_factory.mktemp("animals")
    make_split(root / "src", "train", ("cat", "dog", "fox"))
    make_split(root / "src", "val", ("cat", "fox"), seed=50)
    make_split(root / "src3", "val", ("cat", "dog", "fox"), seed=70)
    make_split(root / "wnid", "train", ("n01440764", "n02102040"), seed=90)
    return {"train": build(root / "src", "train", root / "shards"),
            "val2": build(root / "src", "val", root / "shards"),
            "val3": build(root / "src3", "val", root / "shards3"),
            # another setting: one run may train several settings, never several label spaces
            "wnid": build(root / "wnid", "train", root / "shards-wnid", q=20)}


@pytest.fixture
def copy_of(tmp_path):
    """A private copy of a shard folder the test may damage (with its parent split folder)."""
    def copy(folder: Path) -> Path:
        dst = tmp_path / "copy" / folder.parent.name / folder.name
        shutil.copytree(folder, dst)
        return dst
    return copy


def edit_manifest(folder: Path, edit) -> None:
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


@pytest.fixture(scope="session")
def run_dir(animals, tmp_path_factory) -> Path:
    """A finished fine-tuning run on train/{cat,dog,fox} (its best.pth and last.pth)."""
    from trainer import run
    out = tmp_path_factory.mktemp("run") / "r"
    assert run.main(train_args(animals["train"], out)) == 0
    return out


def train_args(shards: Path, out: Path, *extra: str) -> list[str]:
    return ["--shards", str(shards), "--arch", ARCH, "--batch-size", "2", "--workers", "0", "--shuffle-buffer", "2",
            "--no-progress", "--out", str(out), "--method", "finetune", "--epochs", "1", "--lr", "1e-3", *extra]


def eval_args(checkpoint: Path, shards: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--shards", str(shards), "--out", str(out), "--workers", "0",
            "--no-progress", "--no-cache", *extra]


def one_error(err: str) -> str:
    """The one error line of a failed command (and no traceback)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [l for l in err.splitlines() if l.lower().startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]
