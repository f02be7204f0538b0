"""What a run trains on is what its checkpoint says: a resume that would train on something
else (settings, their weights, --method, --bn, --alpha ...) is refused unless asked for, a
setting named twice is refused, and a setting of weight 0 is not recorded as trained on."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.adversarial.conftest import build, one_error, train_args


@pytest.fixture(scope="module")
def jpeg20(animals, tmp_path_factory):
    """A second setting of the same images and labels as animals' train (jpeg-20)."""
    src = animals["train"].parents[2] / "src"
    return build(src, "train", tmp_path_factory.mktemp("more"), q=20)


def _with(args: list[str], flag: str, *values: str) -> list[str]:
    """``args`` with ``flag``'s value replaced by ``values`` (several: the flag repeated)."""
    i = args.index(flag)
    return args[:i] + [x for v in values for x in (flag, v)] + args[i + 2:]


def _resume(run_dir, tmp_path, shards, *changes: tuple[str, str]):
    """The arguments that resume a copy of ``run_dir`` for a second epoch, with ``changes``."""
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    args = _with(_with(train_args(shards[0], out), "--shards", *map(str, shards)), "--epochs", "2")
    for flag, value in changes:
        args = _with(args, flag, value) if flag in args else args + [flag, value]
    return args + ["--resume", "auto"], out


@pytest.mark.parametrize("changes, named", [([("--bn", "frozen")], "--bn"),
                                            ([("--method", "expert"), ("--alpha", "0.01")], "--method"),
                                            ([("--method", "stability")], "--method")])
def test_resume_with_another_method_or_bn_is_refused(animals, run_dir, tmp_path, capsys, changes, named):
    from trainer import run
    args, out = _resume(run_dir, tmp_path, [animals["train"]], *changes)
    assert run.main(args) == 1
    line = one_error(capsys.readouterr().err)
    assert named in line and "--resume-changed" in line
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1      # nothing trained on


def test_resume_with_other_settings_is_refused_unless_asked(animals, run_dir, jpeg20, tmp_path, capsys):
    from trainer import run
    args, out = _resume(run_dir, tmp_path, [animals["train"], jpeg20])
    assert run.main(args) == 1
    line = one_error(capsys.readouterr().err)
    assert "settings jpeg-10=1 -> jpeg-10=1, jpeg-20=1" in line
    assert run.main(args + ["--resume-changed"]) == 0
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and [e["setting"] for e in ckpt["trained_on"]] == ["jpeg-10", "jpeg-20"]


def test_a_setting_of_weight_zero_is_not_trained_on(animals, jpeg20, tmp_path):
    from trainer import run
    out = tmp_path / "r"
    args = _with(train_args(animals["train"], out, "--setting-weights", "jpeg-20=0"), "--shards",
                 str(animals["train"]), str(jpeg20))
    assert run.main(args) == 0
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert [e["setting"] for e in ckpt["trained_on"]] == ["jpeg-10"]
    assert json.loads((out / "args.json").read_text())["trained_on"] == "jpeg-10"


@pytest.mark.parametrize("spelling", ["same", "dot", "slash"])
def test_a_setting_listed_twice_is_refused(animals, tmp_path, capsys, monkeypatch, spelling):
    from trainer import run
    folder = animals["train"]
    monkeypatch.chdir(folder.parent)
    second = {"same": folder.name, "dot": f"./{folder.name}", "slash": f"{folder.name}/"}[spelling]
    assert run.main(_with(train_args(folder.name, tmp_path / "r"), "--shards", folder.name, second)) == 1
    assert "listed twice" in one_error(capsys.readouterr().err)
    assert not (tmp_path / "r" / "last.pth").exists()


def test_a_setting_listed_twice_in_a_yaml_config_is_refused(animals, tmp_path, capsys):
    from trainer import run
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"shards: [{animals['train']}, {animals['train']}/]\n")
    assert run.main(["--config", str(cfg), *train_args(animals["train"], tmp_path / "r")[2:]]) == 1
    assert "listed twice" in one_error(capsys.readouterr().err)
