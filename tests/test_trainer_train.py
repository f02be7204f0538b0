"""Training runs on tiny shards (CPU): methods, frozen teacher, cache, resume, labels, eval."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import synthetic_rgb
from tests.trainer_helpers import build_shards
from trainer import TrainConfig, loop, methods, run, train
from trainer import evaluation as teval
from trainer.data import LoaderSpec, group_shards, make_eval_loader, make_train_loader
from trainer.losses import ExpertLoss
from trainer.models import build_model, state_dict_hash
from trainer.teacher_cache import cache_path, resolve_caches, validate

torch.set_num_threads(1)
ARCH = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("train"), codecs=(("jpeg", 10),), per_class=4, shard_size=2,
                        splits=("train", "val"))


def base_args(shards, out, *extra):
    return ["--shards", str(shards / "train" / "jpeg-10" / "*.tar"), "--arch", ARCH, "--num-classes", "1000",
            "--batch-size", "4", "--workers", "0", "--shuffle-buffer", "4", "--no-progress", "--out", str(out),
            "--seed", "3", *extra]


def method(name, **kw):
    """A configured method, as trainer.train makes it."""
    return methods.create(TrainConfig(shards=["unused"], out="unused", method=name, arch=ARCH, **kw).resolved())


def step(name, **kw):
    step_kw = {k: kw.pop(k) for k in ("teacher", "labels") if k in kw}
    return loop.Step(method=method(name, **kw), **step_kw)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_alpha_zero_expert_equals_finetune(shards, tmp_path):
    assert run.main(base_args(shards, tmp_path / "ft", "--method", "finetune", "--epochs", "1", "--lr", "1e-3")) == 0
    assert run.main(base_args(shards, tmp_path / "ex", "--method", "expert", "--alpha", "0", "--epochs", "1",
                              "--lr", "1e-3", "--teacher-cache", "off")) == 0
    a, b = weights(tmp_path / "ft" / "last.pth"), weights(tmp_path / "ex" / "last.pth")
    assert same_weights(a, b)


def _batch(shards, need_clean=True, caches=None, bs=4):
    ss = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    loader, _ = make_train_loader(ss, LoaderSpec(batch_size=bs, workers=0, shuffle_buffer=1), epoch=0,
                                  need_clean=need_clean, caches=caches)
    return next(iter(loader))


def test_teacher_frozen_and_few_steps_reduce_loss(shards):
    torch.manual_seed(0)
    model = build_model(ARCH, None, 1000)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    t_before = copy.deepcopy(teacher.state_dict())
    cfg = step("expert", alpha=1e-2, teacher=teacher)
    batch = _batch(shards)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.99))
    model.train()
    losses = []
    for _ in range(8):
        terms = cfg.method.loss(model, batch, cfg)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not same_weights(t_before, model.state_dict())


def test_teacher_cache_gives_the_live_loss(shards, tmp_path):
    torch.manual_seed(1)
    model = build_model(ARCH, None, 1000).eval()
    teacher = copy.deepcopy(model).requires_grad_(False)
    ss = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    caches = resolve_caches(ss, teacher, ARCH, None, mode=str(tmp_path / "cache"))
    p = cache_path(ss[0], ARCH, state_dict_hash(teacher), tmp_path / "cache")
    assert p.exists() and validate(p, ss[0], ARCH, state_dict_hash(teacher)) is None
    assert validate(p, ss[0], "resnet18", state_dict_hash(teacher)) is not None
    assert validate(p, ss[0], ARCH, "0" * 16) is not None
    # a tar touched behind its manifest's back gives the shards another identity: the cache is not used
    tar, st = ss[0].shards[0], os.stat(ss[0].shards[0])
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        assert "other shards" in validate(p, ss[0], ARCH, state_dict_hash(teacher))
    finally:
        os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert validate(p, ss[0], ARCH, state_dict_hash(teacher)) is None
    batch = _batch(shards, need_clean=True, caches=caches)
    assert batch["teacher"].dtype == torch.float16 and batch["teacher"].shape == (4, 1000)
    with torch.no_grad():
        cached_step = step("expert", alpha=0.5)
        cached = cached_step.method.loss(model, batch, cached_step)
        live_batch = {k: v for k, v in batch.items() if k != "teacher"}
        live_step = step("expert", alpha=0.5, teacher=teacher)
        live = live_step.method.loss(model, live_batch, live_step)
    for k in ("loss", "ce", "kl"):
        assert cached[k].item() == pytest.approx(live[k].item(), rel=2e-3, abs=2e-4), k
    # with a cache, training skips the clean crop's decoding (and g's forward pass)
    expert = method("expert")
    assert expert.needs("dataset", cached_teacher=True) == methods.Needs(comp=True, clean=False, teacher=True)
    assert expert.needs("dataset", cached_teacher=False).clean is True
    assert method("finetune").needs("dataset", False) == methods.Needs(comp=True, clean=False, teacher=False)
    assert method("finetune").needs("teacher", True).teacher is True
    assert method("stability").needs("dataset", False) == methods.Needs(comp=False, clean=True, teacher=False)


def test_resume_gives_identical_weights(shards, tmp_path, monkeypatch):
    args = ["--method", "expert", "--epochs", "3", "--lr", "1e-3", "--lr-patience", "1",
            "--val-shards", str(shards / "val" / "jpeg-10" / "*.tar")]
    assert run.main(base_args(shards, tmp_path / "full", *args)) == 0
    real = loop.train_one_epoch
    calls = {"n": 0}

    def dies_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(loop, "train_one_epoch", dies_in_epoch_2)
    cut_cfg = TrainConfig(shards=[str(shards / "train" / "jpeg-10" / "*.tar")], arch=ARCH, num_classes=1000,
                      batch_size=4, workers=0, shuffle_buffer=4, progress=False, out=str(tmp_path / "cut"), seed=3,
                      method="expert", epochs=3, lr=1e-3, lr_patience=1,
                      val_shards=[str(shards / "val" / "jpeg-10" / "*.tar")])
    with pytest.raises(KeyboardInterrupt):
        train(cut_cfg)
    monkeypatch.setattr(loop, "train_one_epoch", real)
    assert torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["epoch"] == 1
    assert run.main(base_args(shards, tmp_path / "cut", *args, "--resume", "auto")) == 0
    assert same_weights(weights(tmp_path / "full" / "last.pth"), weights(tmp_path / "cut" / "last.pth"))
    full = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(l) for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in cut] == [0, 1, 2]
    for a, b in zip(full, cut):
        assert a["train_loss"] == b["train_loss"] and a["val_top1"] == b["val_top1"] and a["lr"] == b["lr"]
    ck = torch.load(tmp_path / "cut" / "best.pth", weights_only=True)
    assert set(ck) >= {"model", "arch", "num_classes", "epoch", "optimizer", "scheduler", "args", "best_metric"}
    assert (tmp_path / "cut" / "summary.csv").read_text().count("\n") == 4
    assert json.loads((tmp_path / "cut" / "args.json").read_text())["alpha"] == 1e-2
    # the saved YAML config repeats the run (timm style)
    from trainer.config import read_yaml
    saved = read_yaml(tmp_path / "cut" / "args.yaml")
    assert saved["alpha"] == 1e-2 and saved["epochs"] == 3 and saved["method"] == "expert"
    import dataclasses
    from trainer.precision import resolve
    # args.yaml records the precision auto resolved to (as it records the worker count)
    assert saved["precision"] == resolve("auto", "cpu").name
    assert TrainConfig.from_yaml(tmp_path / "cut" / "args.yaml").resolved() == \
        dataclasses.replace(cut_cfg, resume="auto", precision=saved["precision"]).resolved()


@pytest.fixture(scope="module")
def unlabelled_shards(tmp_path_factory):
    from pipeline.build import build_setting
    root = tmp_path_factory.mktemp("unlab")
    d = root / "src" / "train"
    d.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(synthetic_rgb(240, 250, seed=50 + i)).save(d / f"img{i}.jpg", quality=95)
    build_setting(src=root / "src", split="train", codec="jpeg", q=10, out=root / "shards", shard_size=2, jobs=1,
                  progress=False)
    return root / "shards"


def test_labels_teacher_trains_on_unlabelled_images(unlabelled_shards, tmp_path):
    ss = group_shards(str(unlabelled_shards / "train" / "jpeg-10" / "*.tar"))
    b = next(iter(make_eval_loader(ss, 8, need_clean=True)))
    assert (b["label"] == -1).all()
    torch.manual_seed(0)
    model = build_model(ARCH, None, 1000).eval()
    teacher = copy.deepcopy(model).requires_grad_(False)
    cfg = step("expert", alpha=0.1, teacher=teacher, labels="teacher")
    with torch.no_grad():
        terms = cfg.method.loss(model, b, cfg)
        t = teacher(b["clean"].float() / 255)
        ref = ExpertLoss(0.1)(model(b["comp"].float() / 255), t, t.argmax(1))
    assert terms["ce"].item() == pytest.approx(ref["ce"].item(), rel=1e-5) and terms["ce"].item() > 0
    # dataset labels on unlabelled data: the CE term is empty
    cfg.labels = "dataset"
    with torch.no_grad():
        assert cfg.method.loss(model, b, cfg)["ce"].item() == 0.0
    res = train(TrainConfig(shards=[str(unlabelled_shards / "train" / "jpeg-10" / "*.tar")], arch=ARCH,
                            batch_size=4, workers=0, progress=False, epochs=1, lr=1e-3, labels="teacher",
                            out=str(tmp_path / "lt")))
    args = json.loads((tmp_path / "lt" / "args.json").read_text())
    assert args["labels"] == "teacher" and args["teacher_cached"] is True
    assert res.rows[0]["train_ce"] > 0 and res.rows[0]["train_skipped"] == 0
    assert list((unlabelled_shards / "train" / "jpeg-10").glob("teacher-*.npy"))


def test_stability_trains_the_head_only(shards, tmp_path):
    assert run.main(base_args(shards, tmp_path / "st", "--method", "stability", "--epochs", "1", "--lr", "1e-2",
                              "--sigma", "0.05")) == 0
    torch.manual_seed(3)
    init = build_model(ARCH, None, 1000).net.state_dict()
    after = weights(tmp_path / "st" / "last.pth")
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    assert changed and all(k.startswith("classifier.") for k in changed), changed
    args = json.loads((tmp_path / "st" / "args.json").read_text())
    assert args["alpha"] == 5e-3 and args["sigma"] == 0.05


def test_eval_rows(shards, tmp_path):
    assert run.main(base_args(shards, tmp_path / "r", "--method", "finetune", "--epochs", "1",
                              "--steps-per-epoch", "1")) == 0
    m = build_model(ARCH, None, 1000)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in m.net.state_dict().items()}, tmp_path / "w.pth")
    out = tmp_path / "res" / "results.json"
    assert teval.main(["--checkpoint", str(tmp_path / "r" / "best.pth"), "--arch", ARCH, "--weights",
                       str(tmp_path / "w.pth"), "--shards", str(shards / "val" / "*" / "*.tar"),
                       str(shards / "train" / "jpeg-10" / "*.tar"), "--out", str(out), "--workers", "0",
                       "--no-progress"]) == 0
    saved = json.loads(out.read_text())
    assert len(saved) == 4
    need = {"checkpoint", "weights", "arch", "method", "trained_on", "setting", "codec", "q", "top1", "top5", "count",
            "mean_bytes", "mean_bpp", "labels"}
    for r in saved:
        assert need <= set(r)
        assert r["setting"] == "jpeg-10" and r["codec"] == "jpeg" and r["q"] == 10 and r["count"] == 8
        assert 0 <= r["top1"] <= r["top5"] <= 100 and r["mean_bytes"] > 0
        assert r["skipped"] == 0 and r["expected"] == 8
    ck = [r for r in saved if r["checkpoint"]]
    pw = [r for r in saved if not r["checkpoint"]]
    assert {r["method"] for r in ck} == {"finetune"} and {r["trained_on"] for r in ck} == {"jpeg-10"}
    assert {r["method"] for r in pw} == {"pretrained"} and all(r["trained_on"] is None for r in pw)
    assert out.with_suffix(".csv").read_text().count("\n") == 5


class _Planted:
    """A pickle that, when loaded without weights_only, creates a marker file (harmless
    stand-in for os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["file", "auto"])
def test_resume_refuses_a_malicious_pickle(shards, tmp_path, how):
    import subprocess
    import sys
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    evil = out / "last.pth" if how == "auto" else tmp_path / "evil.pth"
    torch.save({"model": _Planted(marker), "arch": ARCH, "epoch": 1, "optimizer": {}, "scheduler": {}}, evil)
    resume = "auto" if how == "auto" else str(evil)
    cmd = [sys.executable, "-m", "trainer.run", *base_args(shards, out, "--method", "finetune", "--epochs", "1",
                                                          "--resume", resume)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert p.returncode != 0
    err = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and str(evil) in err[0] and "refused" in err[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "weights_only=False" not in p.stderr
    # and in-process: the loader refuses it too
    from trainer.checkpoint import CheckpointError, load
    with pytest.raises(CheckpointError, match="refused"):
        load(evil)
    assert not marker.exists()
