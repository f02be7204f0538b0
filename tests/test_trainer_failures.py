"""Failure behaviour of the trainer, the reports and the receiver: hostile files made here,
one-line errors, nothing lost silently, nothing written outside the output folder, no hang."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from receiver import predict
from trainer.reports import recommend
from tests.conftest import synthetic_rgb
from tests.trainer_helpers import build_shards
from trainer import run, teacher_cache
from trainer import evaluation as teval
from trainer.models import build_model

torch.set_num_threads(1)
ARCH = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory):
    # 8 samples per split, 4 shards of 2
    return build_shards(tmp_path_factory.mktemp("fail"), codecs=(("jpeg", 10),), per_class=4, shard_size=2,
                        splits=("train", "val"))


@pytest.fixture
def shards(clean_shards, tmp_path):
    """A private copy the test may damage."""
    dst = tmp_path / "shards"
    shutil.copytree(clean_shards, dst)
    return dst


def one_error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err, err[-3000:]
    errors = [l for l in lines if l.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def rewrite_tar(path: Path, edit) -> None:
    """Rewrite a shard: ``edit(name, data)`` returns new data, or None to drop the member."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            data = edit(name, data)
            if data is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def eval_args(shards, out, *extra):
    return ["--arch", ARCH, "--weights", str(shards.parent / "w.pth"), "--shards",
            str(shards / "val" / "jpeg-10" / "*.tar"), "--out", str(out), "--workers", "0", "--no-progress", *extra]


def train_args(shards, out, *extra):
    return ["--shards", str(shards / "train" / "jpeg-10" / "*.tar"), "--arch", ARCH, "--num-classes", "1000",
            "--batch-size", "2", "--workers", "0", "--shuffle-buffer", "2", "--no-progress", "--out", str(out),
            "--method", "finetune", "--epochs", "1", "--lr", "1e-3", *extra]


# -- item 8: silent data loss ---------------------------------------------------------------------
def test_truncated_tar_is_counted_and_fails_eval_past_max_skip(shards, tmp_path, weights_file, capsys):
    shutil.copyfile(weights_file, shards.parent / "w.pth")
    bad = shards / "val" / "jpeg-10" / "shard-000001.tar"
    bad.write_bytes(bad.read_bytes()[:5000])  # cut inside the first sample's members
    out = tmp_path / "res.json"
    assert teval.main(eval_args(shards, out)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "2 of 8 samples skipped" in line and "shard-000001.tar" in line and "--max-skip" in line
    assert not out.exists()  # a setting that lost too much gets no row
    assert teval.main(eval_args(shards, out, "--max-skip", "0.5")) == 0
    (row,) = json.loads(out.read_text())
    assert (row["count"], row["skipped"], row["expected"]) == (6, 2, 8)


def test_sample_without_cls_and_undecodable_bitstream_are_skipped_and_counted(shards, tmp_path, weights_file, capsys):
    shutil.copyfile(weights_file, shards.parent / "w.pth")
    key_nocls = "n01440764/n01440764_0000_JPEG"
    key_garbage = "n02102040/n02102040_0000_JPEG"

    def edit(name, data):
        if name == key_nocls + ".cls":
            return None
        if name == key_garbage + ".comp.jpg":
            return b"\xff\xd8\xff\xe0 not really a JPEG"
        return data

    for tar in (shards / "val" / "jpeg-10").glob("*.tar"):
        rewrite_tar(tar, edit)
    for tar in (shards / "train" / "jpeg-10").glob("*.tar"):
        rewrite_tar(tar, edit)
    out = tmp_path / "res.json"
    assert teval.main(eval_args(shards, out, "--max-skip", "0.3")) == 0
    (row,) = json.loads(out.read_text())
    assert (row["count"], row["skipped"], row["expected"]) == (6, 2, 8)
    # training: counted in the epoch's metrics, and the run fails past --max-skip
    assert run.main(train_args(shards, tmp_path / "ok", "--max-skip", "0.5")) == 0
    rows = [json.loads(l) for l in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_skipped"] >= 2 and rows[0]["train_images"] == 8
    capsys.readouterr()
    assert run.main(train_args(shards, tmp_path / "fails")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "epoch 0 training" in line and ("no .cls member" in line or "comp.jpg" in line)
    assert not (tmp_path / "fails" / "last.pth").exists()


# -- item 10: names from files never become paths unchecked ---------------------------------------
def test_hostile_manifest_setting_never_escapes_the_output_folder(shards, tmp_path, capsys):
    folder = shards / "train" / "jpeg-10"
    m = json.loads((folder / "manifest.json").read_text())
    cache_root = tmp_path / "a" / "b" / "cache"
    m["setting"] = "../../../escaped"  # cache_root / setting would be tmp_path/"escaped"
    (folder / "manifest.json").write_text(json.dumps(m))
    rc = teacher_cache.main(["--shards", str(folder / "*.tar"), "--arch", ARCH, "--out", str(cache_root),
                             "--workers", "0", "--no-progress"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "not a setting name" in line and str(folder) in line
    assert not (tmp_path / "escaped").exists() and not cache_root.exists()
    assert run.main(train_args(shards, tmp_path / "r", "--method", "expert")) == 1
    assert "not a setting name" in one_error_line(capsys.readouterr().err)


def test_hostile_shard_name_in_manifest_is_refused(shards, tmp_path, capsys):
    folder = shards / "val" / "jpeg-10"
    m = json.loads((folder / "manifest.json").read_text())
    m["shards"][0]["name"] = "../../../../x.tar"
    (folder / "manifest.json").write_text(json.dumps(m))
    assert run.main(train_args(shards, tmp_path / "r", "--val-shards", str(folder / "*.tar"))) == 1
    assert "bad shard entry" in one_error_line(capsys.readouterr().err)


# -- items 11, 12: numeric options ----------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("option, value, words", [
    ("--batch-size", "-1", "--batch-size -1: must be a whole number >= 1"),
    ("--batch-size", "0", "--batch-size 0: must be a whole number >= 1"),
    ("--alpha", "-5", "--alpha -5.0: must be a finite number >= 0"),
    ("--lr", "0", "--lr 0.0: must be a finite number > 0"),
    ("--epochs", "0", "--epochs 0: must be a whole number >= 1"),
    ("--workers", "-2", "--workers -2: must be a whole number >= 0"),
    ("--max-skip", "2", "--max-skip 2.0: must be a finite number >= 0 and <= 1"),
])
def test_numeric_options_are_refused_in_one_line(shards, tmp_path, capsys, option, value, words):
    args = train_args(shards, tmp_path / "r", option, value)
    if option == "--alpha":
        args[args.index("finetune")] = "expert"
    assert run.main(args) == 1
    assert words in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r" / "last.pth").exists()


def test_nan_options_are_refused(shards, tmp_path, capsys):
    assert run.main(train_args(shards, tmp_path / "r", "--lr", "nan")) == 2
    assert "not a finite number" in capsys.readouterr().err
    assert teval.main(["--shards", "x", "--checkpoint", "y", "--max-skip", "nan"]) == 2


def test_class_count_mismatch_warns_or_fails(shards, tmp_path, weights_file, caplog, capsys):
    # ImageNet-indexed shards (labels 0 and 217) on a 2-output model: refused, naming the shards
    assert run.main(train_args(shards, tmp_path / "r2", "--num-classes", "2")) == 1
    assert "labels go up to 217 but the model has 2 outputs" in one_error_line(capsys.readouterr().err)
    # a 1000-class model on shards of 2 classes (folder order labels 0, 1): scored, with a warning
    from pipeline.build import build_setting
    src = tmp_path / "src" / "val"
    for c in ("cats", "dogs"):
        (src / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(synthetic_rgb(240, 250, seed=i + 7 * len(c))).save(src / c / f"{i}.jpg")
    build_setting(src=tmp_path / "src", split="val", codec="jpeg", q=10, out=tmp_path / "two", shard_size=4,
                  jobs=1, progress=False)
    caplog.set_level("WARNING")
    out = tmp_path / "res.json"
    assert teval.main(["--arch", ARCH, "--weights", str(weights_file), "--shards",
                       str(tmp_path / "two" / "val" / "jpeg-10" / "*.tar"), "--out", str(out), "--workers", "0",
                       "--no-progress"]) == 0
    assert any("the shards have 2 classes" in r.getMessage() and "1000 outputs" in r.getMessage()
               for r in caplog.records)


# -- item 15: user errors are one line ------------------------------------------------------------
def test_bad_paths_are_one_line(shards, tmp_path, capsys):
    cases = [
        (run.main, ["--shards", str(tmp_path / "none" / "*.tar"), "--out", str(tmp_path / "r")], "no .tar shards match"),
        (run.main, train_args(shards, tmp_path / "r", "--resume", str(tmp_path / "missing.pth")), "no such checkpoint"),
        (run.main, train_args(shards, tmp_path / "r", "--resume", str(tmp_path)), "is a folder"),
        (run.main, ["--config", str(tmp_path / "missing.yaml")], "no such config file"),
        (run.main, train_args(shards, tmp_path / "r", "--weights", str(tmp_path / "w.pth")), "no such weights file"),
        (run.main, train_args(shards, tmp_path / "r", "--arch", "resnet5O"), "unknown arch 'resnet5O'"),
        (teval.main, ["--checkpoint", str(tmp_path / "c.pth"), "--shards", str(shards / "val" / "*" / "*.tar")],
         "no such weights file"),
        (teval.main, ["--arch", ARCH, "--weights", "NOPE", "--shards", str(shards / "val" / "*" / "*.tar")],
         "no weights named 'NOPE'"),
        (teacher_cache.main, ["--shards", str(tmp_path / "x.tar"), "--arch", ARCH], "does not exist"),
        (recommend.main, ["--results", str(tmp_path / "none.json")], "no such results file"),
    ]
    for main, args, words in cases:
        rc = main(args)
        err = capsys.readouterr().err
        assert rc in (1, 2), (args, rc)
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, (args, err)


def test_bad_yaml_config_is_one_line(shards, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    assert run.main(["--config", str(bad)]) == 1
    assert f"{bad}: not a readable YAML file" in one_error_line(capsys.readouterr().err)
    bad.write_text("epochs: 1\nlearning_rate: 3\n")
    assert run.main(["--config", str(bad)]) == 1
    assert "unknown option(s) learning_rate" in one_error_line(capsys.readouterr().err)
    bad.write_text("!!python/object/apply:os.system ['echo hi']\n")
    assert run.main(["--config", str(bad)]) == 1
    assert "not a readable YAML file" in one_error_line(capsys.readouterr().err)


def test_recommend_budget_nan_is_refused(tmp_path, capsys):
    res = tmp_path / "r.json"
    res.write_text("[]")
    for opt in ("--budget", "--bpp", "--min-top1"):
        assert recommend.main(["--results", str(res), opt, "nan"]) == 2
        err = capsys.readouterr().err
        assert "'nan' is not a finite number" in err and "Traceback" not in err


class _Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refused_pickle_in_predict_eval_and_weights_is_one_line_without_torchs_advice(shards, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _Planted(marker), "arch": ARCH, "num_classes": 1000}, evil)
    img = tmp_path / "x.jpg"
    Image.fromarray(synthetic_rgb(224, 224)).save(img)
    for main, args in [(predict.main, ["--model", str(evil), "--device", "cpu", str(img)]),
                       (teval.main, ["--checkpoint", str(evil), "--shards", str(shards / "val" / "*" / "*.tar")]),
                       (run.main, train_args(shards, tmp_path / "r", "--weights", str(evil)))]:
        assert main(args) == 1
        err = capsys.readouterr().err
        line = one_error_line(err)
        assert str(evil) in line and "refused" in line and "weights_only" not in err
    assert not marker.exists()


# -- item 6 (receiver side) and item 11 (hangs) ----------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=1000).eval()
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    torch.save({"model": model.net.state_dict(), "arch": "resnet18", "num_classes": 1000, "args": {}}, path)
    return path


def jpeg(path: Path, h=224, w=224) -> Path:
    Image.fromarray(synthetic_rgb(h, w)).save(path, quality=90)
    return path


@pytest.mark.timeout(120)
def test_predict_refuses_fifos_devices_and_oversized_files_without_hanging(tmp_path, checkpoint, capsys):
    good = jpeg(tmp_path / "good.jpg")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    big = tmp_path / "big.jpg"
    cap = good.stat().st_size + 100
    big.write_bytes(good.read_bytes() + b"\0" * 4096)
    rc = predict.main(["--model", str(checkpoint), "--device", "cpu", "--max-bytes", str(cap), str(fifo),
                       "/dev/zero", str(tmp_path), str(good), str(big)])
    captured = capsys.readouterr()
    assert rc == 1
    assert f"error: {fifo}: not a regular file" in captured.err
    assert "error: /dev/zero: not a regular file" in captured.err
    assert f"error: {tmp_path}: a folder; refused" in captured.err
    assert f"error: {big}: {big.stat().st_size} bytes is over the input cap of {cap}" in captured.err
    assert f"{good}: jpeg" in captured.out and "4 of 5 files could not be classified" in captured.err


def test_predict_keeps_pixel_budget_and_memory_errors_per_file(tmp_path, checkpoint, capsys, monkeypatch):
    small = jpeg(tmp_path / "small.jpg")
    large = tmp_path / "large.png"
    Image.fromarray(np.zeros((1200, 1000, 3), np.uint8)).save(large)
    rc = predict.main(["--model", str(checkpoint), "--device", "cpu", "--max-pixels", "1000000",
                       str(large), str(small)])
    captured = capsys.readouterr()
    assert rc == 1 and f"error: {large}:" in captured.err and "pixel budget" in captured.err
    assert f"{small}: jpeg" in captured.out

    from receiver import core
    real = core.decode_as

    def oom_on_png(codec, data, budget=None):
        if data.startswith(b"\x89PNG"):
            raise MemoryError()
        return real(codec, data, budget)

    monkeypatch.setattr(core, "decode_as", oom_on_png)       # the receiver's decoder
    rc = predict.main(["--model", str(checkpoint), "--device", "cpu", str(large), str(small)])
    captured = capsys.readouterr()
    assert rc == 1 and f"error: {large}: out of memory" in captured.err and f"{small}: jpeg" in captured.out


# -- item 17: unique temporary names --------------------------------------------------------------
def test_outputs_do_not_use_fixed_temporary_names(shards, tmp_path, weights_file):
    out = tmp_path / "r"
    (out / ".summary.csv.tmp").mkdir(parents=True)   # what a second writer with a fixed name would hold
    assert run.main(train_args(shards, out, "--steps-per-epoch", "1")) == 0
    assert (out / "summary.csv").read_text().count("\n") == 2
    res = tmp_path / "res" / "results.json"
    (res.parent / ".results.csv.tmp").mkdir(parents=True)
    shutil.copyfile(weights_file, shards.parent / "w.pth")
    assert teval.main(eval_args(shards, res, "--limit", "2")) == 0
    assert res.with_suffix(".csv").read_text().count("\n") == 2


def test_a_clean_crop_the_teacher_cache_could_not_read_is_skipped_and_counted(shards, tmp_path, capsys):
    """The cache records what it skipped (and stays valid); training with it counts the sample
    whose logits are missing instead of failing on a KeyError."""
    from trainer.data import group_shards
    from trainer.teacher_cache import TeacherCache

    broken = "n02102040/n02102040_0001_JPEG"
    for tar in (shards / "train" / "jpeg-10").glob("*.tar"):
        rewrite_tar(tar, lambda name, data: b"RIFF\0\0\0\0WEBPjunk" if name == broken + ".clean.webp" else data)
    root = tmp_path / "cache"
    args = train_args(shards, tmp_path / "r", "--method", "expert", "--teacher-cache", str(root), "--max-skip", "0.5")
    assert run.main(args) == 0
    (npy,) = (root / "jpeg-10").glob("teacher-*.npy")
    meta = TeacherCache(npy).meta
    assert (meta["count"], meta["skipped"]) == (7, 1) and broken not in meta["keys"]
    assert broken in meta["skip_reasons"][0]
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_skipped"] >= 1
    # the default --max-skip refuses a cache that lost 1 of 8 crops, naming it
    capsys.readouterr()
    assert run.main(train_args(shards, tmp_path / "r2", "--method", "expert", "--teacher-cache",
                               str(tmp_path / "cache2"))) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "teacher cache" in line and broken in line
    assert group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))[0].count == 8
