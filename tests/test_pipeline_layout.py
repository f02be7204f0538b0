"""ImageNet-scale shards: mixed order, the split layout, all settings in one pass,
and readers that stay plain WebDataset."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.build import BuildError, build, build_setting
from pipeline.codecs import decode_any
from pipeline.crops import load_crop
from pipeline.layout import PairingError, check_reference
from pipeline.manifest import VOLATILE
from pipeline.metrics import psnr
from pipeline.plan import order_items
from pipeline.sources import list_source
from tests.conftest import ROOT, make_image_folder

CLASSES = ("n01440764", "n02102040", "n02979186")


def _samples(folder: Path) -> list[dict]:
    return list(wds.WebDataset(sorted(str(p) for p in folder.glob("shard-*.tar")), shardshuffle=False))


def _shard_keys(folder: Path) -> list[list[str]]:
    return [[s["__key__"] for s in wds.WebDataset(str(p), shardshuffle=False)]
            for p in sorted(folder.glob("shard-*.tar"))]


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


def _stable(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in VOLATILE}


@pytest.fixture
def three_classes(tmp_path):
    make_image_folder(tmp_path / "src", classes=CLASSES, per_class=4)
    return tmp_path / "src", "train"


# -- 1: mixed order ------------------------------------------------------------------------------------

def test_mixed_order_is_seeded_and_recorded(three_classes, tmp_path):
    src, split = three_classes
    m = build_setting(src, split, "jpeg", 10, tmp_path / "a", shard_size=4, progress=False)
    assert m["order"] == "mixed" and m["seed"] == 0
    mixed = _shard_keys(tmp_path / "a" / split / "jpeg-10")
    assert [len({k.split("/")[0] for k in keys}) for keys in mixed] != [1, 1, 1]
    flat = [k for keys in mixed for k in keys]
    assert sorted(flat) == sorted(it.key for it in list_source(src, split).items)
    assert flat != sorted(flat)
    build_setting(src, split, "jpeg", 10, tmp_path / "b", shard_size=4, seed=1, progress=False)
    assert [k for keys in _shard_keys(tmp_path / "b" / split / "jpeg-10") for k in keys] != flat
    m = build_setting(src, split, "jpeg", 10, tmp_path / "c", shard_size=4, order="sorted", progress=False)
    assert m["order"] == "sorted"
    assert [{k.split("/")[0] for k in keys} for keys in _shard_keys(tmp_path / "c" / split / "jpeg-10")] == \
        [{c} for c in CLASSES]


def test_every_setting_of_a_split_gets_the_same_permutation(three_classes, tmp_path):
    src, split = three_classes
    build_setting(src, split, "jpeg", 10, tmp_path, shard_size=5, progress=False)
    build_setting(src, split, "j2k", 200, tmp_path, shard_size=5, jobs=2, progress=False)
    build_setting(src, split, "lossless", None, tmp_path, shard_size=5, progress=False)
    keys = [_shard_keys(tmp_path / split / s) for s in ("jpeg-10", "j2k-200", "lossless")]
    assert keys[0] == keys[1] == keys[2] and len(keys[0]) == 3


def test_permutation_depends_only_on_seed_and_files(three_classes):
    src, split = three_classes
    items = list_source(src, split).items
    a = order_items(items, "mixed", 0)
    b = order_items(list(reversed(items)), "mixed", 0)
    assert [i.key for i in a] == [i.key for i in b]
    without = order_items(items[1:], "mixed", 0)             # removing a file moves no other file
    assert [i.key for i in a if i.key != items[0].key] == [i.key for i in without]


def _distinct_classes_per_batch(folder: Path) -> float:
    """Mean distinct labels per batch of the trainer's default train loader (buffer 1000,
    batch 32, 2 workers); labels only, so nothing is decoded."""
    from trainer.data import LoaderSpec, group_shards, make_train_loader

    settings = group_shards(str(folder / "shard-*.tar"))
    loader, n = make_train_loader(settings, LoaderSpec(batch_size=32, workers=2, shuffle_buffer=1000, seed=0),
                                  epoch=0, need_comp=False, need_clean=False)
    counts = [len(set(b["label"].tolist())) for b in loader]
    assert len(counts) == n
    return float(np.mean(counts))


def test_defaults_give_batches_of_mixed_classes(tmp_path):
    """20 classes of 40 images, class-sorted on disk; the default order must give batches with
    at least 0.9 x the distinct classes of an i.i.d. draw, C(1 - (1 - 1/C)^B)."""
    classes = [f"c{i:02d}" for i in range(20)]
    for ci, c in enumerate(classes):
        d = tmp_path / "src" / "train" / c
        d.mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (8, 8), (ci * 12, i * 6, 128)).save(d / f"{i:03d}.png")
    C, B = 20, 32
    iid = C * (1 - (1 - 1 / C) ** B)
    build_setting(tmp_path / "src", "train", "lossless", None, tmp_path / "mixed", shard_size=40, jobs=2,
                  progress=False)
    mixed = _distinct_classes_per_batch(tmp_path / "mixed" / "train" / "lossless")
    build_setting(tmp_path / "src", "train", "lossless", None, tmp_path / "sorted", shard_size=40, jobs=2,
                  order="sorted", progress=False)
    sorted_ = _distinct_classes_per_batch(tmp_path / "sorted" / "train" / "lossless")
    print(f"mixing: mixed {mixed:.2f} sorted {sorted_:.2f} iid {iid:.2f}")
    assert mixed >= 0.9 * iid, (mixed, iid)
    assert sorted_ < 0.9 * iid, (sorted_, iid)        # the test can tell the two orders apart


# -- 2: the split layout -------------------------------------------------------------------------------

def test_split_layout_stores_the_clean_crop_once(three_classes, tmp_path):
    src, split = three_classes
    m = build_setting(src, split, "jpeg", 10, tmp_path, shard_size=5, layout="split", progress=False)
    setting, ref = tmp_path / split / "jpeg-10", tmp_path / split / "lossless"
    assert m["layout"] == "split" and m["reference"]["setting"] == "lossless"
    assert json.loads((ref / "manifest.json").read_text())["layout"] == "pair"     # built first, self-contained
    pairing = check_reference(setting)
    assert pairing.reference == ref.absolute() and pairing.exact and len(pairing.shards) == 3
    records = {r["key"]: r for r in _csv(setting)}
    clean = {s["__key__"]: s for s in _samples(ref)}
    for s in _samples(setting):
        assert sorted(k for k in s if not k.startswith("__")) == ["cls", "comp.jpg"]
        r, c = records[s["__key__"]], clean[s["__key__"]]
        x = decode_any(c["clean.webp"])
        np.testing.assert_array_equal(x, load_crop(src / split / json.loads(c["json"])["path"]))
        assert int(s["cls"]) == int(c["cls"]) == int(r["label"])
        assert int(r["bytes"]) == len(s["comp.jpg"])
        assert float(r["psnr"]) == pytest.approx(psnr(x, decode_any(s["comp.jpg"])))
    # the bitstreams are the pair layout's, byte for byte
    build_setting(src, split, "jpeg", 10, tmp_path / "pair", shard_size=5, progress=False)
    pair = {s["__key__"]: s for s in _samples(tmp_path / "pair" / split / "jpeg-10")}
    assert all(pair[s["__key__"]]["comp.jpg"] == s["comp.jpg"] for s in _samples(setting))
    assert check_reference(tmp_path / "pair" / split / "jpeg-10") is None


def _csv(folder: Path) -> list[dict]:
    import csv
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_split_layout_disk_per_sample_is_the_bitstream_plus_2kb(three_classes, tmp_path):
    src, split = three_classes
    m = build_setting(src, split, "j2k", 200, tmp_path, shard_size=1000, layout="split", progress=False)
    tar = tmp_path / split / "j2k-200" / "shard-000000.tar"
    per_sample = (tar.stat().st_size - 10240) / m["count"]     # minus at most one tar record of end padding
    print(f"split disk per sample {per_sample:.0f} B, bitstream {m['mean']['bytes']:.0f} B")
    assert per_sample <= m["mean"]["bytes"] + 2048


def test_reference_mismatches_are_one_line_errors_naming_both_folders(three_classes, tmp_path):
    src, split = three_classes
    build_setting(src, split, "jpeg", 10, tmp_path, shard_size=5, layout="split", progress=False)
    setting, ref = tmp_path / split / "jpeg-10", tmp_path / split / "lossless"
    ref_tars = _tars(ref)
    # a build that would re-cut the reference: refused, nothing touched
    with pytest.raises(BuildError, match="shard size 5.*asks for 4"):
        build_setting(src, split, "j2k", 200, tmp_path, shard_size=4, layout="split", progress=False)
    with pytest.raises(BuildError, match="pair with it"):
        build_setting(src, split, "lossless", None, tmp_path, shard_size=4, progress=False)
    assert _tars(ref) == ref_tars and not (tmp_path / split / "j2k-200" / "manifest.json").exists()
    # a reference of another split
    make_image_folder(src.parent / "src", classes=CLASSES, per_class=4, split="val", seed=7)
    build_setting(src, "val", "lossless", None, tmp_path, shard_size=5, progress=False)
    shutil.move(str(ref), str(tmp_path / "kept"))
    shutil.copytree(tmp_path / "val" / "lossless", ref)
    with pytest.raises(PairingError, match=f"{setting}.*{ref}.*different splits"):
        check_reference(setting)
    # another plan (different source files)
    shutil.rmtree(ref)
    build(src, "val", ["jpeg-10"], tmp_path / "v", shard_size=5, layout="split", progress=False)
    shutil.copytree(tmp_path / "v" / "val" / "lossless", ref)
    m = json.loads((ref / "manifest.json").read_text())
    m["split"] = split
    (ref / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PairingError, match="different plans.*source_digest"):
        check_reference(setting)
    # no reference at all
    shutil.rmtree(ref)
    with pytest.raises(PairingError, match="has no manifest"):
        check_reference(setting)
    shutil.move(str(tmp_path / "kept"), str(ref))
    assert check_reference(setting).exact


def test_keys_that_do_not_pair_are_found(three_classes, tmp_path):
    src, split = three_classes
    build_setting(src, split, "jpeg", 10, tmp_path, shard_size=5, layout="split", progress=False)
    setting, ref = tmp_path / split / "jpeg-10", tmp_path / split / "lossless"
    (setting / "shard-000001.tar").write_bytes((ref / "shard-000000.tar").read_bytes())
    assert check_reference(setting).exact                      # the manifest alone cannot see it ...
    with pytest.raises(PairingError, match="shard-000001.tar holds keys"):
        check_reference(setting, deep=True)                    # ... the tars can


def test_a_codec_failure_leaves_a_subsequence_that_still_pairs(three_classes, tmp_path, monkeypatch):
    import pipeline.codecs.jpeg as jpeg_mod

    src, split = three_classes
    victim = sorted(it.key for it in list_source(src, split).items)[4]
    original = jpeg_mod.JpegCodec.encode
    seen = {"n": 0}

    def encode(self, rgb):
        seen["n"] += 1
        if seen["n"] == 5:
            raise RuntimeError("encoder failed on this image")
        return original(self, rgb)
    monkeypatch.setattr(jpeg_mod.JpegCodec, "encode", encode)
    m = build(src, split, ["jpeg-10"], tmp_path, shard_size=5, layout="split", jobs=1, order="sorted",
              progress=False)["jpeg-10"]
    assert m["count"] == 11 and [f["reason"] for f in m["failed"]] == ["RuntimeError: encoder failed on this image"]
    pairing = check_reference(tmp_path / split / "jpeg-10", deep=True)
    assert not pairing.exact and pairing.unpaired == 1
    assert victim not in {s["__key__"] for s in _samples(tmp_path / split / "jpeg-10")}


# -- 3: all settings in one pass -----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["pair", "split"])
def test_one_pass_equals_separate_runs(three_classes, tmp_path, layout):
    src, split = three_classes
    names = ["jpeg-10", "j2k-200", "bpg-51", "lossless"]
    one = build(src, split, names, tmp_path / "one", shard_size=5, jobs=2, layout=layout, progress=False)
    for name in names:
        build(src, split, [name], tmp_path / "sep", shard_size=5, jobs=1, layout=layout, progress=False)
    assert sorted(one) == sorted(names)
    for name in names:
        a, b = tmp_path / "one" / split / name, tmp_path / "sep" / split / name
        assert _tars(a) == _tars(b) and len(_tars(a)) == 3, name
        ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
        assert _stable(ma) == _stable(mb), name
        assert (a / "plan.json").read_bytes() == (b / "plan.json").read_bytes()


def test_one_pass_loads_each_source_image_once(three_classes, tmp_path, monkeypatch):
    import pipeline.shards as shards_mod

    src, split = three_classes
    loads = []
    original = shards_mod.load_crop
    monkeypatch.setattr(shards_mod, "load_crop", lambda p, **kw: loads.append(p) or original(p, **kw))
    build(src, split, ["jpeg-10", "jpeg-75", "j2k-200", "lossless"], tmp_path, shard_size=5, jobs=1, layout="split",
          progress=False)
    assert len(loads) == len(set(loads)) == 12


def test_bad_setting_lists_are_one_line_errors(three_classes, tmp_path):
    from click.testing import CliRunner

    from pipeline.__main__ import cli

    src, split = three_classes
    for bad, why in (("jpeg-10,png-3", "unknown codec 'png'"), ("jpeg-10,jpeg-10", "listed twice"),
                     ("jpeg-10,jpeg-", "not a setting name"), ("jpeg-500", "outside [1, 100]")):
        r = CliRunner().invoke(cli, ["shards", "--settings", bad, "--src", str(src), "--split", split,
                                     "--out", str(tmp_path / "o"), "--no-progress"])
        assert r.exit_code != 0 and why in r.output and "Traceback" not in r.output, (bad, r.output)
    assert not (tmp_path / "o").exists()


# -- 4: readers stay standard: the snippet of docs/format.md ----------------------------------------------------

def _docs_snippet() -> str:
    text = (ROOT / "docs" / "format.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- pairing-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/format.md lost the pairing snippet"
    return m.group(1)


def test_docs_pairing_snippet(three_classes, tmp_path, monkeypatch):
    import pipeline.codecs.j2k as j2k_mod

    src, split = three_classes
    original = j2k_mod.J2kCodec.encode
    calls = {"n": 0}

    def encode(self, rgb):           # one image the codec fails on: the snippet must skip it
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(self, rgb)
    monkeypatch.setattr(j2k_mod.J2kCodec, "encode", encode)
    build(src, split, ["j2k-200"], tmp_path, shard_size=5, jobs=1, layout="split", progress=False)
    namespace: dict = {}
    exec(compile(_docs_snippet(), "docs/format.md snippet", "exec"), namespace)
    pairs = list(namespace["paired"](str(tmp_path / split / "j2k-200"), str(tmp_path / split / "lossless")))
    reference = {s["__key__"]: s for s in _samples(tmp_path / split / "lossless")}
    assert len(pairs) == 11 and len(reference) == 12
    for key, sample, clean in pairs:
        assert sample["__key__"] == clean["__key__"] == key
        assert clean["clean.webp"] == reference[key]["clean.webp"]
        assert sample["comp.jp2"][:4] == b"\x00\x00\x00\x0c"  # the JP2 container (the default)


def test_a_reference_folder_of_another_split_is_refused_at_build_time(three_classes, tmp_path):
    src, split = three_classes
    make_image_folder(src.parent / "src", classes=CLASSES, per_class=2, split="val", seed=3)
    build_setting(src, split, "jpeg", 10, tmp_path, shard_size=5, layout="split", progress=False)
    shutil.copytree(tmp_path / split / "lossless", tmp_path / "val" / "lossless")
    before = _tars(tmp_path / "val" / "lossless")
    with pytest.raises(BuildError, match="holds split 'train', not 'val'"):
        build_setting(src, "val", "jpeg", 10, tmp_path, shard_size=5, layout="split", progress=False)
    assert _tars(tmp_path / "val" / "lossless") == before and not (tmp_path / "val" / "jpeg-10").exists()
