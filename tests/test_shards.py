"""Shards: readable by webdataset, right keys and counts, deterministic, restartable, and
bad input recorded rather than fatal."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.__main__ import main as cli_main
from pipeline.build import build_setting
from pipeline.codecs import decode_any
from pipeline.crops import load_crop
from pipeline.manifest import read
from pipeline.metrics import psnr
from tests.conftest import make_image_folder, synthetic_rgb


def _samples(folder: Path):
    urls = sorted(str(p) for p in folder.glob("shard-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False))


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


def test_shards_content_and_manifest(image_folder, tmp_path):
    src, split = image_folder
    m = build_setting(src, split, "jpeg", 10, tmp_path / "out", shard_size=4, jobs=1, progress=False)
    folder = tmp_path / "out" / "train" / "jpeg-10"
    assert m["codec"] == "jpeg" and m["q"] == 10 and m["split"] == "train" and m["setting"] == "jpeg-10"
    assert m["count"] == 6 and m["failed"] == []
    assert [s["count"] for s in m["shards"]] == [4, 2]
    assert m["classes"] == ["tench", "English springer"] and m["num_classes"] == 1000
    for stat in ("mean", "median"):
        assert set(m[stat]) == {"bytes", "bpp", "psnr", "ssim"}
    assert read(folder) == m

    samples = _samples(folder)
    assert len(samples) == 6
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 6 and all("." not in k for k in keys)
    records = []
    for s in samples:
        assert set(k for k in s if not k.startswith("__")) == {"clean.webp", "comp.jpg", "cls", "json"}
        rec = json.loads(s["json"])
        records.append(rec)
        x = load_crop(src / split / rec["path"])
        np.testing.assert_array_equal(decode_any(s["clean.webp"]), x)  # clean crop stored exactly
        y = decode_any(s["comp.jpg"])
        assert rec["bytes"] == len(s["comp.jpg"])
        assert rec["bpp"] == pytest.approx(8 * len(s["comp.jpg"]) / (224 * 224))
        assert rec["psnr"] == pytest.approx(psnr(x, y))
        assert int(s["cls"]) == rec["label"] == {"n01440764": 0, "n02102040": 217}[rec["path"].split("/")[0]]
    assert m["mean"]["bytes"] == pytest.approx(np.mean([r["bytes"] for r in records]))
    assert m["median"]["psnr"] == pytest.approx(np.median([r["psnr"] for r in records]))
    csv_lines = (folder / "manifest.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("key,path,label")


def test_lossless_setting(image_folder, tmp_path):
    src, split = image_folder
    m = build_setting(src, split, "lossless", None, tmp_path, shard_size=10, progress=False)
    assert m["setting"] == "lossless" and m["q"] is None
    assert m["mean"]["psnr"] is None and m["psnr_infinite"] == 6 and m["mean"]["ssim"] == 1.0
    json.loads((tmp_path / "train" / "lossless" / "manifest.json").read_text())  # strict JSON, no Infinity
    for s in _samples(tmp_path / "train" / "lossless"):
        assert not any(k.startswith("comp.") for k in s)


def test_deterministic_whatever_the_job_count(image_folder, tmp_path):
    src, split = image_folder
    build_setting(src, split, "j2k", 200, tmp_path / "a", shard_size=2, jobs=1, progress=False)
    build_setting(src, split, "j2k", 200, tmp_path / "b", shard_size=2, jobs=2, progress=False)
    a, b = _tars(tmp_path / "a/train/j2k-200"), _tars(tmp_path / "b/train/j2k-200")
    assert len(a) == 3 and a == b


def test_restart_redoes_only_missing_shards(image_folder, tmp_path):
    src, split = image_folder
    build_setting(src, split, "jpeg", 30, tmp_path, shard_size=2, progress=False)
    folder = tmp_path / "train" / "jpeg-30"
    first = _tars(folder)
    # a killed run: one shard missing, one temp file left behind
    (folder / "shard-000001.tar").unlink()
    (folder / ".shard-000002.tar.tmp123").write_bytes(b"partial")
    untouched = (folder / "shard-000000.tar").stat().st_mtime_ns
    m = build_setting(src, split, "jpeg", 30, tmp_path, shard_size=2, progress=False)
    assert _tars(folder) == first
    assert (folder / "shard-000000.tar").stat().st_mtime_ns == untouched
    assert not list(folder.glob(".shard-*"))
    assert m["count"] == 6
    # a changed setting for the same folder is redone, not silently reused
    m2 = build_setting(src, split, "jpeg", 30, tmp_path, shard_size=3, progress=False)
    assert [s["count"] for s in m2["shards"]] == [3, 3] and not (folder / "shard-000002.tar").exists()


def test_bad_files_are_recorded_not_fatal(image_folder, tmp_path):
    src, split = image_folder
    d = src / split / "n01440764"
    (d / "empty.JPEG").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(synthetic_rgb(300, 300)).save(buf, "JPEG")
    (d / "truncated.JPEG").write_bytes(buf.getvalue()[:2000])
    (src / split / "stray.jpg").write_bytes(buf.getvalue())  # outside the class folders
    m = build_setting(src, split, "jpeg", 10, tmp_path / "out", shard_size=4, progress=False)
    assert m["count"] == 6
    failed = {Path(f["path"]).name: f["reason"] for f in m["failed"]}
    assert set(failed) == {"empty.JPEG", "notes.txt", "truncated.JPEG", "stray.jpg"}
    assert "truncated" in failed["truncated.JPEG"]
    assert "UnidentifiedImageError" in failed["notes.txt"]
    assert "class folders" in failed["stray.jpg"]


def test_decompression_bomb_guard_stays_on(image_folder, tmp_path, monkeypatch):
    src, split = image_folder
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)  # our 300x240 images become "bombs"
    m = build_setting(src, split, "jpeg", 10, tmp_path, shard_size=10, progress=False)
    assert m["count"] == 0 and len(m["failed"]) == 6
    assert all("DecompressionBomb" in f["reason"] for f in m["failed"])


def test_label_rules(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(synthetic_rgb(240, 260, seed=i)).save(flat / f"cam{i}.png")
    m = build_setting(flat, None, "jpeg", 50, tmp_path / "o1", progress=False)
    assert m["split"] == "all" and m["count"] == 3
    assert {int(s["cls"]) for s in _samples(tmp_path / "o1/all/jpeg-50")} == {-1}

    make_image_folder(tmp_path / "own", classes=("dogs", "cats"), per_class=1)
    m = build_setting(tmp_path / "own", "train", "jpeg", 50, tmp_path / "o2", progress=False)
    assert m["class_index"] == {"cats": 0, "dogs": 1}  # torchvision ImageFolder rule

    table = tmp_path / "classes.txt"
    table.write_text("7\tdogs\n3\tcats\n")
    m = build_setting(tmp_path / "own", "train", "jpeg", 50, tmp_path / "o3", classes_file=table, progress=False)
    assert m["class_index"] == {"cats": 3, "dogs": 7}


def test_cli(image_folder, tmp_path, capsys):
    src, split = image_folder
    with pytest.raises(SystemExit) as exit_:
        cli_main(["shards", "--codec", "j2k", "--q", "200", "--src", str(src), "--split", split,
                  "--out", str(tmp_path), "--jobs", "1", "--shard-size", "3", "--no-progress"])
    assert exit_.value.code == 0
    assert "train/j2k-200: 6 images in 2 shards" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli_main(["shards", "--codec", "jpeg", "--q", "500", "--src", str(src), "--out", str(tmp_path)])
    assert exit_.value.code == 1
    assert "outside [1, 100]" in capsys.readouterr().err
