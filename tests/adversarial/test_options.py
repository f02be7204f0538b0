"""Options and configs: every bad value is one line before anything runs; a diverging run
stops before a non-finite model is saved."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from receiver import predict
from tests.conftest import synthetic_rgb
from trainer import evaluation as teval, run

from .conftest import eval_args, one_error, train_args


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**63), "-1"])
def test_a_seed_out_of_range_is_one_line(animals, tmp_path, capsys, seed):
    assert run.main(train_args(animals["train"], tmp_path / "r", "--seed", seed)) == 1
    assert "--seed" in one_error(capsys.readouterr().err)


@pytest.mark.parametrize("text, option", [
    ("betas: 5\n", "betas"), ("betas: [0.5]\n", "betas"), ("out: 5\n", "out"), ("device: 5\n", "device"),
    ("lr_patience: '3'\n", "lr_patience"), ("val_shards: {a: 1}\n", "val_shards"), ("amp: yes please\n", "amp"),
    ("weight_decay: [1]\n", "weight_decay"), ("val_batch_size: 2.5\n", "val_batch_size"), ("seed: true\n", "seed"),
])
def test_a_config_value_of_the_wrong_type_is_one_line(animals, tmp_path, capsys, text, option):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    args = train_args(animals["train"], tmp_path / "r")
    if option == "out":
        i = args.index("--out")
        del args[i:i + 2]
    assert run.main(["--config", str(cfg), *args]) == 1
    line = one_error(capsys.readouterr().err)
    assert option in line
    assert not (tmp_path / "r").exists()


def test_a_config_device_never_reaches_torch(animals, tmp_path, capsys, monkeypatch):
    # device: 5 must not be taken as GPU 5 (torch.device(5) is cuda:5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("device: 5\n")
    assert run.main(["--config", str(cfg), *train_args(animals["train"], tmp_path / "r")]) == 1
    assert "device" in one_error(capsys.readouterr().err)


@pytest.fixture
def picture(tmp_path):
    p = tmp_path / "x.jpg"
    Image.fromarray(synthetic_rgb(224, 224)).save(p)
    return p


@pytest.mark.parametrize("device", ["bogus", "cuda:banana", "meta", "cuda:99"]
                         + ([] if torch.cuda.is_available() else ["cuda"]))
def test_a_device_this_machine_lacks_is_one_line(animals, run_dir, tmp_path, capsys, picture, device):
    assert run.main(train_args(animals["train"], tmp_path / "r", "--device", device)) == 1
    assert "--device" in one_error(capsys.readouterr().err)
    assert teval.main(eval_args(run_dir / "best.pth", animals["val3"], tmp_path / "e.json", "--device", device)) == 1
    assert "--device" in one_error(capsys.readouterr().err)
    assert predict.main(["--model", str(run_dir / "best.pth"), "--device", device, str(picture)]) == 1
    assert "--device" in one_error(capsys.readouterr().err)


def test_a_diverging_run_stops_and_never_saves_a_non_finite_model(animals, tmp_path, capsys):
    out = tmp_path / "r"
    args = train_args(animals["train"], out, "--lr", "1e12", "--epochs", "2", "--val-shards", str(animals["val3"]))
    assert run.main(args) == 1
    assert "diverged" in one_error(capsys.readouterr().err)
    for name in ("last.pth", "best.pth"):
        if (out / name).exists():
            sd = torch.load(out / name, weights_only=True)["model"]
            assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point()), name
