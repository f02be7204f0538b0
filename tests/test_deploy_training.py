"""What a deployer needs from a run: --bn frozen keeps the pretrained normalisation statistics,
a generalist mixes several settings in every batch with the asked shares, and the checkpoint
says what it was trained on (``trained_on``, ``bn``, read through trainer.checkpoint)."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from tests.trainer_helpers import build_shards
from trainer import TrainConfig, checkpoint, run, train
from trainer.data import LoaderSpec, group_shards, make_train_loader
from trainer.data.mixing import MixError, check_mixable, parse_weights, setting_weights
from trainer.models import build_model, norm_layers, set_train_mode

torch.set_num_threads(1)
ARCH = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 3 settings of the same 12 train images (8 val), shards of 2
    return build_shards(tmp_path_factory.mktemp("deploy"), codecs=(("jpeg", 10), ("jpeg", 75), ("lossless", None)),
                        per_class=4, shard_size=2, splits=("train", "val"))


def glob(shards, *settings, split="train"):
    return [str(shards / split / s / "*.tar") for s in settings]


def config(data, out, weights_file, **kw):
    base = dict(shards=glob(data, "jpeg-10"), arch=ARCH, weights=str(weights_file), num_classes=1000, batch_size=4,
                workers=0, shuffle_buffer=4, progress=False, out=str(out), seed=3, epochs=1, lr=1e-3,
                teacher_cache="off")
    return TrainConfig(**{**base, **kw})


def norm_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def affine_state(state: dict, model) -> dict:
    names = {n for n, m in model.net.named_modules() if m in set(norm_layers(model.net))}
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[0] in names and k.endswith((".weight", ".bias"))}


# -- --bn -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_bn_frozen_keeps_running_stats_and_trains_the_affine_weights(shards, weights_file, tmp_path, bn):
    initial = torch.load(weights_file, weights_only=True)
    model = build_model(ARCH, str(weights_file), 1000)
    assert norm_layers(model.net), "the architecture has BatchNorm layers"
    # two epochs with validation in between: the model goes back to training after evaluate()
    train(config(shards, tmp_path / bn, weights_file, bn=bn, epochs=2, val_shards=glob(shards, "jpeg-10", split="val")))
    ckpt = torch.load(tmp_path / bn / "last.pth", weights_only=True)
    after = ckpt["model"]
    stats0, stats1 = norm_state(initial), norm_state(after)
    assert stats0 and stats0.keys() == stats1.keys()
    same = all(torch.equal(stats0[k], stats1[k]) for k in stats0)
    assert same is (bn == "frozen")
    affine0, affine1 = affine_state(initial, model), affine_state(after, model)
    assert affine0 and any(not torch.equal(affine0[k], affine1[k]) for k in affine0)
    assert ckpt["bn"] == bn and checkpoint.bn_mode(ckpt) == bn
    assert (tmp_path / bn / "args.yaml").read_text().count(f"bn: {bn}") == 1


def test_set_train_mode_frozen_keeps_norm_layers_in_eval_under_ddp_style_wrapping():
    torch.manual_seed(0)
    inner = build_model(ARCH, None, 10)
    wrapper = torch.nn.Sequential(inner)     # what DDP is to the model: a module holding it
    set_train_mode(wrapper, bn="frozen")
    norms = norm_layers(wrapper)
    assert norms and not any(m.training for m in norms)
    convs = [m for m in wrapper.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.training for m in convs)
    set_train_mode(wrapper, bn="train")
    assert all(m.training for m in norms)


def test_bn_frozen_without_norm_layers_warns_and_trains(shards, tmp_path, caplog):
    torch.manual_seed(0)
    assert not norm_layers(build_model("squeezenet1_0", None, 1000).net)
    with caplog.at_level(logging.WARNING, logger="trainer.run"):
        train(TrainConfig(shards=glob(shards, "jpeg-10"), arch="squeezenet1_0", num_classes=1000, batch_size=4,
                          workers=0, shuffle_buffer=4, progress=False, out=str(tmp_path / "sq"), epochs=1, lr=1e-4,
                          teacher_cache="off", bn="frozen", steps_per_epoch=1))
    assert any("no normalisation layers" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "sq" / "last.pth").is_file()


# -- mixing -----------------------------------------------------------------------------------------------
def drawn(shards, weights, seed=0, workers=0, batches=100, bs=32):
    sets = group_shards(glob(shards, "lossless", "jpeg-10", "jpeg-75"), in_order=True)
    loader, n = make_train_loader(sets, LoaderSpec(batch_size=bs, workers=workers, shuffle_buffer=64, seed=seed),
                                  epoch=0, need_comp=False, need_clean=False, batches=batches, weights=weights)
    return [b["setting"] for b in loader if b["label"].numel()], [s.name for s in sets]


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 2, 1], [0, 3, 1]])
def test_realised_shares_follow_the_asked_shares(shards, weights):
    batches, names = drawn(shards, weights)
    flat = [s for b in batches for s in b]
    assert len(flat) == 3200
    for name, w in zip(names, weights):
        realised = 100 * flat.count(name) / len(flat)
        assert abs(realised - 100 * w / sum(weights)) <= 2, (name, realised)
    if all(weights):      # mixed inside every batch, not folder after folder
        assert all(len(set(b)) == len(names) for b in batches)


def test_mixing_is_deterministic_and_seeded(shards):
    a, _ = drawn(shards, [1, 1, 1], seed=5, batches=10)
    b, _ = drawn(shards, [1, 1, 1], seed=5, batches=10)
    c, _ = drawn(shards, [1, 1, 1], seed=6, batches=10)
    assert a == b and a != c


def test_mixing_with_worker_processes(shards):
    batches, names = drawn(shards, [1, 1, 1], workers=2, batches=20, bs=16)
    flat = [s for b in batches for s in b]
    assert len(flat) == 320 and set(flat) == set(names)


def test_generalist_run_records_shares_and_trained_on(shards, weights_file, tmp_path):
    out = tmp_path / "gen"
    train(config(shards, out, weights_file, shards=glob(shards, "jpeg-75", "lossless", "jpeg-10"),
                 setting_weights="jpeg-75=2,lossless=1,jpeg-10=1", bn="frozen"))
    row = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert set(row["train_share"]) == {"jpeg-75", "lossless", "jpeg-10"}
    assert abs(sum(row["train_share"].values()) - 100) < 1e-6
    ckpt = torch.load(out / "best.pth", weights_only=True)
    entries = checkpoint.training_settings(ckpt)
    assert [e["setting"] for e in entries] == ["jpeg-75", "lossless", "jpeg-10"]      # the order given
    assert [e["weight"] for e in entries] == [2.0, 1.0, 1.0]
    manifest = json.loads((shards / "train" / "jpeg-75" / "manifest.json").read_text())
    first = entries[0]
    assert (first["codec"], first["q"]) == ("jpeg", 75)
    assert first["bytes_per_image"] == pytest.approx(manifest["mean"]["bytes"])
    assert first["bpp"] == pytest.approx(manifest["mean"]["bpp"])
    assert first["pixels_per_image"] == 224 * 224
    assert (entries[1]["codec"], entries[1]["q"]) == ("lossless", None)


def test_checkpoint_readers_on_old_checkpoints():
    assert checkpoint.training_settings({"model": {}}) == []
    assert checkpoint.bn_mode({"model": {}}) == "train"
    assert checkpoint.training_settings({"trained_on": "jpeg-10"}) == []
    assert checkpoint.bn_mode({"bn": "frozen"}) == "frozen"


@pytest.mark.parametrize("text, words", [
    ("bpg-46=1", "bpg-46 not among"),
    ("jpeg-10=0,jpeg-75=0,lossless=0", "every weight is zero"),
    ("jpeg-10=-1", "finite number >= 0"),
    ("jpeg-10=nan", "finite number >= 0"),
    ("jpeg-10=inf", "finite number >= 0"),
    ("jpeg-10", "SETTING=WEIGHT"),
])
def test_bad_setting_weights_are_one_line_errors(shards, tmp_path, capsys, text, words):
    argv = ["--shards", *glob(shards, "jpeg-10", "jpeg-75", "lossless"), "--arch", ARCH, "--num-classes", "1000",
            "--workers", "0", "--no-progress", "--out", str(tmp_path / "bad"), "--setting-weights", text]
    assert run.main(argv) != 0
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err and len(lines) == 1 and words in lines[0], err
    assert not (tmp_path / "bad" / "last.pth").exists()


def test_settings_of_other_label_spaces_or_splits_are_refused(shards, tmp_path):
    sets = group_shards(glob(shards, "jpeg-10", "jpeg-75"))
    check_mixable(sets)
    other = group_shards(glob(shards, "jpeg-75", split="val"))
    with pytest.raises(MixError, match="differ in split"):
        check_mixable([sets[0], other[0]])
    sets[1].manifest["num_classes"] = 10
    with pytest.raises(MixError, match="differ in class count"):
        check_mixable(sets)
    sets[1].manifest["num_classes"] = sets[0].manifest["num_classes"]
    sets[1].manifest["class_index"] = {"x": 0}
    with pytest.raises(MixError, match="differ in classes"):
        check_mixable(sets)
    assert parse_weights("a=1, b=2") == {"a": 1.0, "b": 2.0}
    assert setting_weights(sets, None) == [1.0, 1.0]
