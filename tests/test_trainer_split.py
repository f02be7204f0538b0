"""The trainer on split-layout shards (trainer side): a setting paired with its
reference by key gives what the same data in pair layout gives; the teacher cache is the
reference's, built once for every setting of the split; a missing or mismatched reference is
a one-line error naming both folders; images a setting's codec failed on are not data loss."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.build import build
from tests.conftest import make_image_folder
from trainer import EvalConfig, TrainConfig, evaluate, run, train
from trainer import evaluation as teval
from trainer import teacher_cache
from trainer.data import LoaderSpec, group_shards, make_eval_loader, make_train_loader

torch.set_num_threads(1)
ARCH = "mobilenet_v3_small"
CLASSES = ("n01440764", "n02102040", "n02979186")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 images of 3 classes, shards of 4: jpeg-10 and jpeg-75 in split layout (+ lossless,
    their reference), and jpeg-10 in pair layout from the same plan."""
    root = tmp_path_factory.mktemp("split")
    make_image_folder(root / "src", classes=CLASSES, per_class=4, size=(250, 230))
    build(root / "src", "train", ["jpeg-10", "jpeg-75"], root / "split", shard_size=4, jobs=1, layout="split",
          progress=False)
    build(root / "src", "train", ["jpeg-10"], root / "pair", shard_size=4, jobs=1, progress=False)
    return root


@pytest.fixture
def copy(data, tmp_path):
    """A private copy of the split-layout shards the test may damage."""
    shutil.copytree(data / "split", tmp_path / "split")
    return tmp_path / "split" / "train"


def setting(root: Path, layout: str, name: str = "jpeg-10") -> str:
    return str(root / layout / "train" / name / "*.tar")


def config(shards, out, **kw) -> TrainConfig:
    base = dict(shards=shards if isinstance(shards, list) else [shards], arch=ARCH, num_classes=1000,
                batch_size=4, workers=0, shuffle_buffer=4, progress=False, epochs=1, lr=1e-3, seed=2, out=str(out))
    return TrainConfig(**{**base, **kw})


def weights(path: Path) -> dict:
    return torch.load(path / "last.pth", map_location="cpu", weights_only=True)["model"]


def test_the_loader_joins_the_reference_only_when_the_clean_crop_is_needed(data, monkeypatch):
    pair, split = group_shards(setting(data, "pair")), group_shards(setting(data, "split"))
    assert split[0].reference is not None and pair[0].reference is None
    assert split[0].reference.folder == str((data / "split" / "train" / "lossless").absolute())
    opened = []
    from trainer.data import tarstream
    real = tarstream.tar_samples
    monkeypatch.setattr(tarstream, "tar_samples", lambda path, url=None, **kw: opened.append(Path(path).parent.name)
                        or real(path, url, **kw))
    spec = LoaderSpec(batch_size=4, workers=0, shuffle_buffer=4, seed=1)
    for need_comp, need_clean, reads in ((True, True, {"jpeg-10", "lossless"}), (True, False, {"jpeg-10"}),
                                         (False, True, {"lossless"})):
        opened.clear()
        a = list(make_train_loader(pair, spec, epoch=0, need_comp=need_comp, need_clean=need_clean)[0])
        opened.clear()
        b = list(make_train_loader(split, spec, epoch=0, need_comp=need_comp, need_clean=need_clean)[0])
        assert set(opened) == reads, (need_comp, need_clean)
        assert [x["key"] for x in a] == [x["key"] for x in b] and len(a) == 3
        for x, y in zip(a, b):
            assert all(torch.equal(x[k], y[k]) for k in ("label", "comp", "clean") if k in x)
            assert {k for k in x if k != "skips"} == {k for k in y if k != "skips"}
    ev = [list(make_eval_loader(s, 5)) for s in (pair, split)]
    assert [x["key"] for x in ev[0]] == [x["key"] for x in ev[1]]
    assert all(torch.equal(x["comp"], y["comp"]) for x, y in zip(*ev))


@pytest.mark.parametrize("method, extra", [("expert", {"teacher_cache": "off"}), ("expert", {}),
                                           ("finetune", {}), ("stability", {"sigma": 0.05})])
def test_training_gives_the_pair_layouts_losses_and_weights(data, tmp_path, method, extra):
    runs = {}
    for layout in ("pair", "split"):
        val = [setting(data, layout)]
        runs[layout] = train(config(setting(data, layout), tmp_path / layout, method=method, val_shards=val,
                                    teacher_cache=extra.get("teacher_cache", str(tmp_path / f"cache-{layout}")),
                                    **{k: v for k, v in extra.items() if k != "teacher_cache"}))
    a, b = runs["pair"].rows[0], runs["split"].rows[0]
    for k in ("train_loss", "train_ce", "train_kl", "train_images", "train_skipped", "val_loss", "val_top1",
              "val_count", "val_skipped"):
        assert a[k] == b[k], k
    assert a["train_images"] == 12 and a["val_count"] == 12
    wa, wb = weights(tmp_path / "pair"), weights(tmp_path / "split")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_teacher_cache_is_the_references_built_once_for_every_setting(data, copy, tmp_path, monkeypatch,
                                                                          capsys):
    builds = []
    real = teacher_cache.build_cache
    monkeypatch.setattr(teacher_cache, "build_cache",
                        lambda s, *a, **k: builds.append(teacher_cache.cache_target(s).folder) or real(s, *a, **k))
    both = [str(copy / "jpeg-10" / "*.tar"), str(copy / "jpeg-75" / "*.tar")]
    r = train(config(both, tmp_path / "both", method="expert"))
    assert builds == [str((copy / "lossless").absolute())] and r.rows[0]["train_skipped"] == 0
    (npy,) = (copy / "lossless").glob("teacher-*.npy")
    npy_first = npy
    assert not list((copy / "jpeg-10").glob("teacher-*")) and not list((copy / "jpeg-75").glob("teacher-*"))
    meta = json.loads(npy.with_suffix(".json").read_text())
    ref = json.loads((copy / "lossless" / "manifest.json").read_text())
    assert meta["plan_id"] == ref["plan_id"] and meta["identity"] and meta["count"] == 12
    # another setting of the split, a later run: the same cache, not rebuilt
    train(config(str(copy / "jpeg-75" / "*.tar"), tmp_path / "75", method="expert"))
    assert len(builds) == 1
    # the command, for another teacher (fresh random weights): one cache for both settings
    assert teacher_cache.main(["--shards", str(copy / "jpeg-10" / "*.tar"), "--shards", str(copy / "jpeg-75" / "*.tar"),
                               "--arch", ARCH, "--workers", "0", "--no-progress"]) == 0
    assert len(builds) == 2 and "shared with the other settings" in capsys.readouterr().out
    npy = npy_first
    # its logits are those of the pair layout's own cache (the same clean crops, the same teacher)
    pair = tmp_path / "pair"
    shutil.copytree(data / "pair", pair)
    train(config(str(pair / "train" / "jpeg-10" / "*.tar"), tmp_path / "p", method="expert"))
    (pair_npy,) = (pair / "train" / "jpeg-10").glob("teacher-*.npy")
    assert pair_npy.name == npy.name
    rows = lambda p: dict(zip(json.loads(p.with_suffix(".json").read_text())["keys"], np.load(p)))  # noqa: E731
    a, b = rows(npy), rows(pair_npy)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # a reference rebuilt from other images invalidates it
    m = json.loads((copy / "lossless" / "manifest.json").read_text())
    m["shards"][0]["sha256"] = "0" * 64
    (copy / "lossless" / "manifest.json").write_text(json.dumps(m))
    assert "other shards" in teacher_cache.validate(npy, group_shards(str(copy / "jpeg-10" / "*.tar"))[0], ARCH,
                                                    meta["weights_hash"], meta["precision"])


def _fail_on_the_fifth_image(monkeypatch):
    import pipeline.codecs.jpeg as jpeg_mod
    original = jpeg_mod.JpegCodec.encode
    seen = {"n": 0}

    def encode(self, rgb):
        seen["n"] += 1
        if seen["n"] == 5 and self.q == 10:
            raise RuntimeError("encoder failed on this image")
        return original(self, rgb)
    monkeypatch.setattr(jpeg_mod.JpegCodec, "encode", encode)


def test_images_the_codec_failed_on_are_not_data_loss(data, tmp_path, monkeypatch):
    _fail_on_the_fifth_image(monkeypatch)
    m = build(data / "src", "train", ["jpeg-10"], tmp_path, shard_size=4, jobs=1, layout="split",
              progress=False)["jpeg-10"]
    monkeypatch.undo()
    assert m["count"] == 11 and len(m["failed"]) == 1
    shards = str(tmp_path / "train" / "jpeg-10" / "*.tar")
    for kw in ({"teacher_cache": "off"}, {}, {"method": "stability", "sigma": 0.05}):
        kw = {"method": "expert", **kw}
        r = train(config(shards, tmp_path / f"run-{len(kw)}-{kw.get('teacher_cache')}", max_skip=0.0,
                         train_limit=None, batch_size=2, val_shards=[shards], **kw))
        row = r.rows[0]
        assert row["train_skipped"] == 0 and row["val_skipped"] == 0 and row["val_count"] == 11, kw
        assert row["train_images"] == (12 if kw["method"] == "stability" else 10), kw   # stability reads x alone
    (res,) = evaluate(EvalConfig(checkpoints=[str(tmp_path / "run-2-off" / "last.pth")], shards=[shards],
                                 out=None, workers=0, progress=False, max_skip=0.0))
    assert (res["count"], res["skipped"], res["expected"]) == (11, 0, 11)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _drop_last_shard(m):
    m["count"] -= m["shards"].pop()["count"]


@pytest.mark.parametrize("damage, words", [
    (lambda t: shutil.rmtree(t / "lossless"), "which has no manifest"),
    (lambda t: _edit_manifest(t / "lossless", lambda m: m.update(split="val")), "different splits"),
    (lambda t: _edit_manifest(t / "lossless", lambda m: m.update(plan_id="x", seed=7)),
     "different plans (seed 0 vs 7)"),
    (lambda t: _edit_manifest(t / "lossless", _drop_last_shard), "different shards (3 vs 2)"),
    (lambda t: (t / "lossless" / "shard-000001.tar").unlink(), "shard-000001.tar is missing"),
])
def test_a_missing_or_mismatched_reference_is_one_line_naming_both_folders(copy, tmp_path, capsys, damage, words):
    damage(copy)
    shards = str(copy / "jpeg-10" / "*.tar")
    for main, args in ((run.main, ["--shards", shards, "--arch", ARCH, "--out", str(tmp_path / "r"),
                                   "--workers", "0", "--no-progress"]),
                       (teval.main, ["--arch", ARCH, "--weights", "none.pth", "--shards", shards,
                                     "--out", str(tmp_path / "res.json"), "--workers", "0", "--no-progress"]),
                       (teacher_cache.main, ["--shards", shards, "--arch", ARCH, "--workers", "0", "--no-progress"])):
        assert main(args) == 1, main
        line = one_error_line(capsys.readouterr().err)
        assert words in line and str(copy / "jpeg-10") in line and str(copy / "lossless") in line, line
    assert not (tmp_path / "r" / "last.pth").exists() and not (tmp_path / "res.json").exists()


def test_keys_that_do_not_pair_at_run_time_are_skipped_counted_and_fail_the_run(copy, tmp_path, capsys):
    """Shards swapped behind the manifests' back: the pairing check cannot see it, the join can."""
    (copy / "jpeg-10" / "shard-000001.tar").write_bytes((copy / "jpeg-10" / "shard-000000.tar").read_bytes())
    args = ["--shards", str(copy / "jpeg-10" / "*.tar"), "--arch", ARCH, "--num-classes", "1000", "--out",
            str(tmp_path / "r"), "--workers", "0", "--no-progress", "--batch-size", "4", "--epochs", "1",
            "--teacher-cache", "off", "--lr", "1e-3"]
    assert run.main(args) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "epoch 0 training" in line and "shard-000001.tar" in line and "not in the reference's shard-000001.tar" \
        in line
    assert not (tmp_path / "r" / "last.pth").exists()
