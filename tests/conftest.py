"""Shared fixtures.  Tests that read ../shared skip with a reason when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.synthetic import make_image_folder, synthetic_rgb  # noqa: F401 - the tests import them from here

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("M2M_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared, or skip the calling test when it is not there."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (the ../shared data is only present for developers and CI)")
    return p


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture
def image_folder(tmp_path):
    """(root, split) of a tiny 2-class ImageNet-style folder with 3 images per class."""
    make_image_folder(tmp_path / "src")
    return tmp_path / "src", "train"
