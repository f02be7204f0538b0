"""Shared fixtures.  Tests that read ../shared skip with a reason when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures.synthetic import make_image_folder, synthetic_rgb  # noqa: F401 - the tests import them from here

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("M2M_SHARED", ROOT.parent / "shared"))


#: the test being set up or run (its fixtures included), for the marker check of shared_path
_RUNNING: list = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _RUNNING[:] = [item]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    _RUNNING[:] = []


def shared_path(*parts: str) -> Path:
    """Path inside ../shared, or skip the calling test when it is not there.  A test (or a
    fixture it uses) that reads ../shared without the ``shared`` marker fails, with or without
    ../shared: the marker is how a run without the data deselects those tests."""
    p = SHARED.joinpath(*parts)
    if _RUNNING and _RUNNING[0].get_closest_marker("shared") is None:
        pytest.fail(f"{_RUNNING[0].nodeid} reads ../shared ({'/'.join(parts)}) without the `shared` marker",
                    pytrace=False)
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


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """The 1000-class ImageNet-shaped weights of a seeded random mobilenet_v3_small (the small
    architecture of the training tests), as a state_dict file."""
    import torch

    from trainer.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "w.pth"
    torch.save(build_model("mobilenet_v3_small", None, 1000).net.state_dict(), path)
    return path
