"""Labels and label spaces: one rule for what a label may be, one label space per run."""
from __future__ import annotations

import io
import logging
import tarfile

import pytest
import torch

from pipeline.build import build_setting
from trainer import evaluation as teval, run
from trainer.losses import LabelError, masked_ce

from .conftest import edit_manifest, eval_args, make_split, one_error, train_args


def set_label(tar_path, key_index: int, label: bytes) -> None:
    """Rewrite one sample's .cls in a shard."""
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    cls = [i for i, (n, _) in enumerate(members) if n.endswith(".cls")]
    name, _ = members[cls[key_index]]
    members[cls[key_index]] = (name, label)
    with tarfile.open(tar_path, "w") as tar:
        for n, data in members:
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_loss_refuses_every_label_out_of_range_but_the_unlabelled_one():
    logits = torch.zeros(3, 4)
    assert float(masked_ce(logits, torch.tensor([-1, 2, 3]))) == pytest.approx(float(torch.log(torch.tensor(4.0))))
    for bad in (-7, -2, 4, 99):
        with pytest.raises(LabelError, match=str(bad)):
            masked_ce(logits, torch.tensor([0, bad, 1]))


def test_a_negative_label_is_never_trained_as_class_0(animals, copy_of, tmp_path, capsys):
    shards = copy_of(animals["train"])
    set_label(shards / "shard-000000.tar", 0, b"-7")
    # no sample may be dropped: the -7 must stop the run (a skip, or an error naming it)
    assert run.main(train_args(shards, tmp_path / "r", "--max-skip", "0")) == 1
    line = one_error(capsys.readouterr().err)
    assert "-7" in line


def test_a_negative_label_is_not_unlabelled_in_evaluation(animals, run_dir, copy_of, tmp_path, capsys):
    shards = copy_of(animals["val3"])
    set_label(shards / "shard-000000.tar", 0, b"-7")
    assert teval.main(eval_args(run_dir / "best.pth", shards, tmp_path / "r.json", "--max-skip", "0")) == 1
    assert "-7" in one_error(capsys.readouterr().err)


def test_train_and_val_of_different_label_spaces_are_refused(animals, tmp_path, capsys):
    # train/{cat,dog,fox} against val/{cat,fox}: fox is 2 in one and 1 in the other
    assert run.main(train_args(animals["train"], tmp_path / "r", "--val-shards", str(animals["val2"]))) == 1
    assert "label space" in one_error(capsys.readouterr().err)
    assert not (tmp_path / "r" / "last.pth").exists()


def test_a_checkpoint_is_refused_on_shards_of_another_label_space(animals, run_dir, tmp_path, capsys):
    assert teval.main(eval_args(run_dir / "best.pth", animals["val2"], tmp_path / "r.json")) == 1
    assert "label space" in one_error(capsys.readouterr().err)
    # the same classes in the same order: evaluated
    assert teval.main(eval_args(run_dir / "best.pth", animals["val3"], tmp_path / "r.json")) == 0


def test_the_label_space_id_is_in_manifests_and_checkpoints(animals, run_dir):
    from pipeline.classes import label_space_id
    from pipeline.manifest import Manifest
    from trainer.checkpoint import load
    train, val2, val3 = (Manifest.load(animals[k]) for k in ("train", "val2", "val3"))
    assert train["label_space"] == val3["label_space"] == label_space_id(["cat", "dog", "fox"])
    assert val2["label_space"] == label_space_id(["cat", "fox"]) != train["label_space"]
    assert load(run_dir / "best.pth")["args"]["label_space"] == train["label_space"]


def test_old_manifests_without_an_id_warn_but_do_not_fail(animals, copy_of, tmp_path, caplog):
    train, val = copy_of(animals["train"]), copy_of(animals["val3"])
    for folder in (train, val):
        edit_manifest(folder, lambda m: m.pop("label_space"))
    caplog.set_level(logging.WARNING)
    assert run.main(train_args(train, tmp_path / "r", "--val-shards", str(val))) == 0
    assert any("no label-space id" in r.getMessage() for r in caplog.records)


def test_old_manifests_of_different_label_spaces_are_still_refused(animals, copy_of, tmp_path, capsys):
    train, val = copy_of(animals["train"]), copy_of(animals["val2"])
    for folder in (train, val):
        edit_manifest(folder, lambda m: m.pop("label_space"))
    assert run.main(train_args(train, tmp_path / "r", "--val-shards", str(val))) == 1
    assert "'fox' is index" in one_error(capsys.readouterr().err)


@pytest.mark.parametrize("order", ["wnid-first", "two-first"])
def test_shards_of_1000_and_of_3_classes_are_never_mixed(animals, tmp_path, capsys, order):
    # the ImageNet-indexed folder has 1000 classes, the other 3; either order is refused
    pair = [animals["wnid"], animals["train"]]
    if order == "two-first":
        pair.reverse()
    args = train_args(pair[0], tmp_path / "r")
    args[args.index("--shards") + 1: args.index("--shards") + 1] = [str(pair[1])]
    assert run.main(args) == 1
    err = one_error(capsys.readouterr().err)
    assert "label space" in err or "classes" in err


# -- class tables -------------------------------------------------------------------------------
@pytest.mark.parametrize("table, words", [
    ("0\tcat\n0\tdog\n", "index 0 is given to both"),               # two folders, one label
    ("0\tcat\n1\tcat\n1\tdog\n", "listed twice"),                    # one folder, two labels
    ("999999999999\tcat\n1\tdog\n", "is not below"),                 # a head of 10^12 outputs
    ("\n\n", "empty class table"),
])
def test_a_class_table_that_would_relabel_or_allocate_is_refused(tmp_path, table, words):
    from pipeline.build import BuildError
    from pipeline.classes import LabelSpaceError
    make_split(tmp_path / "src", "train", ("cat", "dog"), per_class=1)
    (tmp_path / "classes.txt").write_text(table)
    with pytest.raises((LabelSpaceError, BuildError), match=words):
        build_setting(src=tmp_path / "src", split="train", codec="jpeg", q=10, out=tmp_path / "out", jobs=1,
                      progress=False, classes_file=tmp_path / "classes.txt")
    assert not (tmp_path / "out" / "train" / "jpeg-10" / "manifest.json").exists()


def test_a_class_table_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    from pipeline.classes import LabelSpaceError, read_class_table
    os.mkfifo(tmp_path / "classes.txt")
    with pytest.raises(LabelSpaceError, match="not a regular file"):
        read_class_table(tmp_path / "classes.txt")


@pytest.mark.parametrize("name", ["\u00b2", "\u0663", "9" * 5000])
def test_a_group_class_that_only_looks_like_an_index_is_one_line(name):
    # '²'.isdigit() and '٣'.isdigit() are true, int() refuses the first; 5000 digits pass the int() limit
    from trainer.groups import GroupError, resolve
    with pytest.raises(GroupError, match="is not a class"):
        resolve({"g": [name]}, {"cat": 0}, None, "the shards")


def test_a_groups_file_that_is_a_device_is_refused(tmp_path, animals, run_dir, capsys):
    assert teval.main(eval_args(run_dir / "best.pth", animals["val3"], tmp_path / "r.json",
                                "--classes", "/dev/zero")) == 1
    assert "not a regular file" in one_error(capsys.readouterr().err)
