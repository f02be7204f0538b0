"""Routing a received bitstream to its expert: the quality read from headers, the rule, the zoo."""
from __future__ import annotations

import io
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.codecs import CodecError, PictureTooLargeError, Probe, create, probe
from pipeline.setting import PAPER_SETTINGS, Setting
from tests.conftest import shared_path, synthetic_rgb
from tests.zoo_helpers import entry_of, trained_on_entry, write_expert
from receiver.route import DEFAULT, ExpertCard, Router, TrainedSetting
from receiver.zoo import ZooError, card_of, expert_entries, load_zoo

NINE = [s for s in PAPER_SETTINGS if s != "lossless"]


# --------------------------------------------------------------------------- quality from headers

@pytest.mark.parametrize("quality", [5, 10, 50, 75, 95])
def test_jpeg_quality_from_pillow_files_is_exact(quality):
    rgb = synthetic_rgb(120, 160, seed=quality)
    for subsampling in (0, 2):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=subsampling)
        p = probe(buf.getvalue())
        assert (p.codec, p.width, p.height, p.quality) == ("jpeg", 160, 120, quality)
        assert p.quality_source == "quantisation tables"


def test_jpeg_quality_of_every_value_round_trips():
    """Pillow's tables of every quality read back as that quality: no two qualities share tables."""
    rgb = synthetic_rgb(32, 32, seed=1)
    got = []
    for q in range(1, 101):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=q)
        got.append(probe(buf.getvalue()).quality)
    assert got == list(range(1, 101))


@pytest.mark.parametrize("q", [0, 20, 41, 46, 51])
def test_bpg_q_from_the_slice_qp(q):
    data = create("bpg", q, effort=1).encode(synthetic_rgb(48, 64, seed=q))
    p = probe(data)
    assert (p.codec, p.width, p.height) == ("bpg", 64, 48)
    # q 0..3 all code the I slice at QP 0 (x265 clips q - 3 at 0)
    assert p.quality == max(q, 3) and p.quality_source == "slice QP"


@pytest.mark.shared
def test_bpg_q_of_the_genuine_encoder_vectors():
    folder = shared_path("bpg-vectors")
    files = sorted(folder.glob("*_q*_*.bpg"))
    assert files
    for f in files:
        q = int(re.search(r"_q(\d+)_", f.name).group(1))
        assert probe(f.read_bytes()).quality == q, f.name


def test_j2k_and_lossless_carry_no_quality_and_their_size_is_read():
    rgb = synthetic_rgb(70, 100, seed=3)
    for setting in ("j2k-200", "lossless"):
        s = Setting.parse(setting)
        data = create(s.codec, s.q).encode(rgb)
        p = probe(data)
        assert (p.codec, p.width, p.height, p.quality, p.bytes) == (s.codec, 100, 70, None, len(data))
        assert p.bpp == pytest.approx(8 * len(data) / 7000)


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(create("jpeg", 50).encode(synthetic_rgb(16, 16, seed=0)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_header_over_the_pixel_budget_is_refused_before_decoding():
    with pytest.raises(PictureTooLargeError):
        probe(_jpeg_declaring(65500, 65500))
    with pytest.raises(CodecError):
        probe(b"\xff\xd8\xff\xe0 truncated")


# --------------------------------------------------------------------------- the rule

def _p(codec, bpp, quality=None, source=None):
    w = h = 224
    return Probe(codec, w, h, int(round(bpp * w * h / 8)), quality, source)


def _cards(*specs):
    return [ExpertCard(name, tuple(TrainedSetting.from_entry(e, name) for e in entries)) for name, entries in specs]


def test_the_quality_carried_wins_over_the_rate():
    router = Router(_cards(("j10", [entry_of("jpeg-10", 0.5)]), ("j5", [entry_of("jpeg-5", 0.4)])))
    # a jpeg-10 file as small as a typical jpeg-5 one still goes to the jpeg-10 expert
    r = router.route(_p("jpeg", 0.4, 10, "quantisation tables"))
    assert (r.expert, r.setting) == ("j10", "jpeg-10")
    assert "q 10 (quantisation tables)" in r.reason
    # a quality no expert was trained at: the nearest rate
    assert router.route(_p("jpeg", 0.42, 30, "quantisation tables")).expert == "j5"


def test_nearest_rate_in_log_and_the_reason_names_both_rates():
    router = Router(_cards(("a", [entry_of("j2k-75", 0.32)]), ("b", [entry_of("j2k-200", 0.12)]),
                           ("c", [entry_of("j2k-400", 0.06)])))
    # the boundary is the geometric mean, 0.196 bpp (a linear distance would put 0.20 with b)
    assert router.route(_p("j2k", 0.20)).expert == "a"
    assert router.route(_p("j2k", 0.19)).expert == "b"
    r = router.route(_p("j2k", 0.121))
    assert r.expert == "b" and "j2k, 0.121 bpp, nearest 0.12 bpp (j2k-200)" == r.reason


def test_generalist_then_default():
    cards = _cards(("jpeg", [entry_of("jpeg-10", 0.5)]),
                   ("small-mix", [entry_of("jpeg-10", 0.5), entry_of("j2k-200", 0.12)]),
                   ("bpg-mix", [entry_of("bpg-41", 0.3), entry_of("jpeg-5", 0.4)]),
                   ("big-mix", [entry_of(s, 0.3) for s in ("jpeg-5", "jpeg-75", "j2k-75")]))
    router = Router(cards)
    assert router.route(_p("bpg", 0.3, 46, "slice QP")).expert == "bpg-mix"     # one that saw bpg
    r = router.route(_p("lossless", 9.0))
    assert r.expert == "big-mix" and "generalist (3 settings)" in r.reason       # none saw it: the widest
    assert Router(cards[:1]).route(_p("bpg", 0.3, 41, "slice QP")).expert == DEFAULT


def test_zoo_cards_from_a_yaml_list(tmp_path):
    write_expert(tmp_path / "r1", [entry_of("jpeg-10", 0.5), entry_of("j2k-200", 0.12)], seed=0)
    write_expert(tmp_path / "old", None, seed=1)
    (tmp_path / "zoo.yaml").write_text("- {path: r1/best.pth, settings: [j2k-200]}\n"
                                       "- {path: old/best.pth, settings: [bpg-41]}\n")
    entries = expert_entries(tmp_path / "zoo.yaml")
    assert [e.name for e in entries] == ["r1/best.pth", "old/best.pth"]
    zoo = load_zoo(tmp_path / "zoo.yaml")
    assert [s.setting for s in zoo.experts["r1/best.pth"].card.settings] == ["j2k-200"]
    assert zoo.experts["old/best.pth"].card.settings[0].bpp is None
    expert, route = zoo.choose(_p("bpg", 2.0, 41, "slice QP"))
    assert expert.name == "old/best.pth" and "bpg-41" in route.reason
    with pytest.raises(Exception, match="no expert for lossless and no default"):
        zoo.choose(_p("lossless", 9.0))


@pytest.mark.parametrize("text, reason", [
    ("- {path: r1/best.pth, settings: [jpeg-75]}\n", "not trained on jpeg-75"),
    ("- {path: r1/best.pth, oops: 1}\n", "expected {path: FILE"),
    ("{a: 1}\n", "expected a YAML list"),
    ("- [unclosed\n", "not a readable list of experts"),
])
def test_bad_lists_are_one_line_errors(tmp_path, text, reason):
    write_expert(tmp_path / "r1", [entry_of("jpeg-10", 0.5)], seed=0)
    (tmp_path / "zoo.yaml").write_text(text)
    with pytest.raises(ZooError, match=re.escape(reason)) as err:
        load_zoo(tmp_path / "zoo.yaml")
    assert "\n" not in str(err.value)


def test_a_checkpoint_without_trained_on_is_only_a_default(tmp_path):
    write_expert(tmp_path / "runs" / "old", None, seed=0)
    with pytest.raises(ZooError, match="no trained_on"):
        load_zoo(tmp_path / "runs")
    zoo = load_zoo(None, default=str(tmp_path / "runs" / "old" / "best.pth"))
    expert, route = zoo.choose(_p("jpeg", 1.0, 50, "quantisation tables"))
    assert expert.name == DEFAULT and "default model" in route.reason


def test_card_refuses_a_setting_name_that_is_not_one(tmp_path):
    from receiver.zoo import Entry
    with pytest.raises(ZooError, match="not a setting name"):
        card_of(Entry("x", tmp_path / "x.pth"), [{"setting": "../etc", "bpp": 1.0}])


# --------------------------------------------------------------------------- 500 real images

def _encode(args):
    setting, path = args
    from pipeline.crops import crop_image
    s = Setting.parse(setting)
    with Image.open(path) as img:
        rgb = crop_image(img.convert("RGB"))
    return setting, create(s.codec, s.q).encode(rgb)


@pytest.fixture(scope="module")
def paper_zoo_and_images(tmp_path_factory):
    """One expert per paper setting, its trained_on from a manifest the pipeline built from
    Imagenette train images, and 500 val crops encoded with the nine settings (shuffled)."""
    from pipeline.build import build

    root = shared_path("imagenette")
    tmp = tmp_path_factory.mktemp("paper")
    manifests = build(root, "train", NINE, tmp / "shards", shard_size=100, jobs=2, limit=18, progress=False)
    cards = [ExpertCard(f"runs/{name}", (TrainedSetting.from_entry(trained_on_entry(m), name),))
             for name, m in manifests.items()]
    files = sorted((root / "val").glob("*/*"))
    rng = np.random.default_rng(0)
    picked = rng.choice(len(files), 500, replace=False)
    jobs = [(NINE[i % len(NINE)], files[j]) for i, j in enumerate(picked)]
    # spawn: a forked worker would share the parent's J2K scratch file with its sibling
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        images = list(pool.map(_encode, jobs, chunksize=8))
    return cards, images


@pytest.mark.slow
@pytest.mark.shared
def test_500_paper_images_go_to_the_expert_of_their_setting(paper_zoo_and_images):
    cards, images = paper_zoo_and_images
    router = Router(cards)
    hits = {s: [0, 0] for s in NINE}
    for setting, data in images:
        route = router.route(probe(data))
        hits[setting][0] += route.expert == f"runs/{setting}"
        hits[setting][1] += 1
    total = sum(h for h, _ in hits.values())
    assert sum(n for _, n in hits.values()) == 500
    assert total / 500 >= 0.99, hits


@pytest.mark.slow
@pytest.mark.shared
def test_rate_alone_separates_j2k_but_not_bpg_and_jpeg(paper_zoo_and_images):
    """Without the quality the headers carry, the rate alone: exact for J2K (its rate control
    hits the ratio), not enough for BPG and JPEG, whose rates per image overlap between
    neighbouring settings: why the rule reads the quality first."""
    cards, images = paper_zoo_and_images
    router = Router(cards)
    right = {}
    for setting, data in images:
        p = probe(data)
        route = router.route(Probe(p.codec, p.width, p.height, p.bytes))
        right.setdefault(Setting.parse(setting).codec, []).append(route.expert == f"runs/{setting}")
    share = {codec: float(np.mean(v)) for codec, v in right.items()}
    assert share["j2k"] >= 0.99, share
    assert share["bpg"] < 0.95 and share["jpeg"] < 0.99, share


def test_probe_of_damaged_bitstreams_is_a_probe_or_a_codec_error():
    """Truncations and flipped bytes of every format: the header reader answers or refuses in
    one CodecError, never another exception (the server answers 4xx on it)."""
    rng = np.random.default_rng(0)
    rgb = synthetic_rgb(40, 56, seed=5)
    streams = [create("jpeg", 10).encode(rgb), create("j2k", 200).encode(rgb),
               create("j2k", 200, container="j2k").encode(rgb), create("bpg", 41, effort=1).encode(rgb),
               create("lossless").encode(rgb), create("webp", 50).encode(rgb), create("avif", 60).encode(rgb),
               create("jxl", 2.0).encode(rgb)]
    outcomes = {"probe": 0, "refused": 0}
    for data in streams:
        for _ in range(60):
            b = bytearray(data)
            if rng.random() < 0.3:
                b = b[: int(rng.integers(4, len(b)))]
            for _ in range(int(rng.integers(1, 4))):
                i = int(rng.integers(4, len(b)))
                b[i] = int(rng.integers(0, 256))
            try:
                p = probe(bytes(b))
            except CodecError as exc:
                assert "\n" not in str(exc)
                outcomes["refused"] += 1
            else:
                assert p.width > 0 and p.height > 0
                outcomes["probe"] += 1
    assert outcomes["probe"] and outcomes["refused"]
