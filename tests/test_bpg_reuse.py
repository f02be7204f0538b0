"""x265 encoder re-use: the same bytes as a fresh encoder, bounded, never poisoned."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tools.bpg as bpg
from tests.conftest import ROOT, shared_path, synthetic_rgb
from tools.bpg import hevc
from tools.bpg.errors import BpgError


@pytest.fixture(autouse=True)
def fresh_cache():
    hevc.clear_encoders()
    yield
    hevc.clear_encoders()


def _same_as_fresh(images, **kw) -> list[int]:
    """Encode each image with re-use, then alone; returns the indices whose bytes differ."""
    reused = [bpg.encode(img, reuse=True, **kw) for img in images]
    fresh = [bpg.encode(img, reuse=False, **kw) for img in images]
    return [i for i, (a, b) in enumerate(zip(reused, fresh)) if a != b]


@pytest.mark.parametrize("chroma", ["420", "444", "gray"])
def test_reuse_is_byte_identical_on_interleaved_sizes(chroma):
    sizes = [(64, 64), (48, 80), (64, 64), (17, 33), (48, 80), (64, 64), (96, 40), (17, 33), (64, 64), (64, 64)]
    images = [synthetic_rgb(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    assert _same_as_fresh(images, q=35, effort=3, chroma=chroma) == []
    stats = hevc.encoder_stats()
    assert stats["reused"] >= 5 and stats["fallbacks"] == 0, stats


def test_reuse_at_the_papers_setting():
    images = [synthetic_rgb(64, 72, seed=i) for i in range(10)]
    assert _same_as_fresh(images, q=41, effort=9) == []
    assert hevc.encoder_stats()["reused"] == 9


def test_the_slice_flag_is_what_differs_without_normalisation(monkeypatch):
    """Without the rewrite, x265's slice_loop_filter_across_slices_enabled_flag follows the
    picture count (bit POC % 31 of a constant): pictures 2 and 3 differ from a fresh encode."""
    monkeypatch.setattr(hevc, "set_bit", lambda nal, pos, value: nal)
    images = [synthetic_rgb(48, 48, seed=i) for i in range(4)]
    assert _same_as_fresh(images, q=35, effort=3) == [2, 3]


def test_lru_keeps_a_bounded_number_of_encoders(monkeypatch):
    for i in range(hevc.MAX_ENCODERS + 3):
        bpg.encode(synthetic_rgb(32 + 8 * i, 32, seed=i), q=35, effort=2)
        assert hevc.encoder_stats()["open"] == min(i + 1, hevc.MAX_ENCODERS)
    monkeypatch.setattr(hevc, "MAX_CACHED_PIXELS", 48 * 48)
    hevc.clear_encoders()
    big = synthetic_rgb(64, 64)
    assert bpg.encode(big, q=35, effort=2) == bpg.encode(big, q=35, effort=2, reuse=False)
    assert hevc.encoder_stats()["open"] == 0      # too large to keep: encoded fresh


def test_a_failed_encode_does_not_poison_the_cache(monkeypatch):
    images = [synthetic_rgb(48, 64, seed=i) for i in range(6)]
    fresh = [bpg.encode(img, q=35, effort=3, reuse=False) for img in images]
    assert bpg.encode(images[0], q=35, effort=3) == fresh[0]
    # 1. the normaliser meets something unexpected: the picture is redone on a fresh encoder
    real = hevc.slice_lfas_flag_position
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise BpgError("injected")
        return real(*args)

    monkeypatch.setattr(hevc, "slice_lfas_flag_position", flaky)
    assert bpg.encode(images[1], q=35, effort=3) == fresh[1]
    assert hevc.encoder_stats()["fallbacks"] == 1
    # 2. an exception inside the encode call: the encoder is dropped and the error goes up
    h, w = 48, 64
    bad = [np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)]  # 4:4:4 planes
    hevc.encode_planes([np.zeros((h, w), np.uint8)] * 3, 3, 35, 3)      # a 4:4:4 encoder in the cache
    bad[1] = np.zeros((h + 8, w), np.uint8)                               # a chroma plane too tall
    with pytest.raises(ValueError):
        hevc.encode_planes(bad, 3, 35, 3)
    # 3. every later picture is still exactly a fresh encode
    assert [bpg.encode(img, q=35, effort=3) for img in images[2:]] == fresh[2:]


_FORK_CHILD = r"""
import os, sys
import tools.bpg as bpg
from tests.conftest import synthetic_rgb
img = synthetic_rgb(48, 48)
first = bpg.encode(img, q=30, effort=2)      # the parent now holds an open encoder
pid = os.fork()
if pid == 0:
    ok = bpg.encode(img, q=30, effort=2) == first
    sys.exit(0 if ok else 3)                 # a normal interpreter exit in the forked child
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_neither_hangs_nor_reuses_the_parents_encoder():
    """x265's threads do not survive fork(): the child must not close the inherited encoder."""
    proc = subprocess.run([sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "0", (proc.stdout, proc.stderr)


# -- real images (../shared) -----------------------------------------------------------

@pytest.mark.shared
def test_reuse_identity_on_the_genuine_vector_sources():
    root = shared_path("bpg-vectors")
    records = json.loads((root / "manifest.json").read_text())["records"]
    sources = {r["source"]: np.asarray(Image.open(root / r["source"]).convert("RGB")) for r in records}
    jobs = [(sources[r["source"]], dict(q=r["q"], effort=r["m"], chroma=str(r["f"]))) for r in records]
    reused = [bpg.encode(img, **kw) for img, kw in jobs]      # sizes and settings interleaved
    fresh = [bpg.encode(img, reuse=False, **kw) for img, kw in jobs]
    assert [i for i, (a, b) in enumerate(zip(reused, fresh)) if a != b] == []
    assert hevc.encoder_stats()["reused"] > 0 and hevc.encoder_stats()["fallbacks"] == 0


@pytest.mark.shared
@pytest.mark.slow
def test_reuse_identity_on_60_imagenette_crops_of_several_sizes():
    from pipeline.crops import load_crop
    files = sorted(shared_path("imagenette", "val").glob("*/*.JPEG"))
    picks = [files[i] for i in np.random.default_rng(12).choice(len(files), 60, replace=False)]
    sizes = [(224, 224), (149, 223), (224, 224), (200, 120), (96, 160), (224, 224)]
    images = []
    for i, path in enumerate(picks):
        h, w = sizes[i % len(sizes)]
        images.append(np.ascontiguousarray(load_crop(path)[:h, :w]))
    assert _same_as_fresh(images, q=41, effort=9) == []
    stats = hevc.encoder_stats()
    assert stats["reused"] >= 50 and stats["fallbacks"] == 0, stats
