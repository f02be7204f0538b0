"""The checkpoint saver: ``last.pth`` every epoch, ``best.pth`` when the named metric improves,
each recording what chose it; and the optimizer chosen by name."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline.manifest import digest
from trainer import checkpoint
from trainer.checkpoint import CHECKPOINT_KEYS, LAST_EPOCH, TRAIN_LOSS, CheckpointSaver
from trainer.config import ConfigError, TrainConfig
from trainer.optim import make_optimizer
from trainer.rundir import RunDir

VAL = SimpleNamespace(name="jpeg-10", manifest={"setting": "jpeg-10", "count": 4},
                      shards=["/data/val/jpeg-10/shard-000001.tar", "/data/val/jpeg-10/shard-000000.tar"])


def state(epoch: int) -> dict:
    return {"model": {"w": torch.tensor([float(epoch)])}, "arch": "resnet18", "num_classes": 10, "epoch": epoch,
            "optimizer": {}, "scheduler": {}, "args": {"seed": 0}, "metrics": {"epoch": epoch},
            "trained_on": [{"setting": "jpeg-10"}], "bn": "train", "precision": "fp32"}


def epochs(saver: CheckpointSaver, rows: list[tuple[dict, float]]) -> list[bool]:
    out = []
    for epoch, (row, loss) in enumerate(rows, 1):
        improved = saver.update(row, loss)
        saver.save(state(epoch), improved)
        out.append(improved)
    return out


def test_best_is_the_highest_val_top1_and_says_what_chose_it(tmp_path):
    run = RunDir(tmp_path)
    saver = CheckpointSaver(run, "top1", [VAL])
    rows = [({"val_top1": 50.0}, 2.0), ({"val_top1": 70.0}, 1.5), ({"val_top1": 60.0}, 1.0)]
    assert epochs(saver, rows) == [True, True, False]
    best, last = checkpoint.load(run.best), checkpoint.load(run.last)
    assert tuple(best) == tuple(last) == CHECKPOINT_KEYS
    assert best["epoch"] == 2 and best["best_metric"] == 70.0 and last["epoch"] == 3 and last["best_metric"] == 70.0
    assert last["selected_on"] == LAST_EPOCH
    assert best["selected_on"] == {"by": "val_top1", "folders": [
        {"setting": "jpeg-10", "manifest": digest(VAL.manifest), "shards": ["shard-000000.tar", "shard-000001.tar"]}]}
    assert checkpoint.selected_on_scored(best["selected_on"], VAL) is True


def test_best_on_loss_and_without_validation(tmp_path):
    loss_saver = CheckpointSaver(RunDir(tmp_path / "a"), "loss", [VAL])
    assert epochs(loss_saver, [({"val_top1": 90.0}, 2.0), ({"val_top1": 10.0}, 1.0), ({}, float("nan"))]) == [
        True, True, False]
    assert checkpoint.load(tmp_path / "a" / "best.pth")["selected_on"]["by"] == "val_loss"
    # without validation shards the train loss chooses, whatever --best-metric says
    plain = CheckpointSaver(RunDir(tmp_path / "b"), "top1", [])
    assert epochs(plain, [({}, 3.0), ({}, 4.0)]) == [True, False]
    best = checkpoint.load(tmp_path / "b" / "best.pth")
    assert best["epoch"] == 1 and best["best_metric"] == -3.0 and best["selected_on"] == TRAIN_LOSS
    assert checkpoint.selected_on_scored(best["selected_on"], VAL) is False


def test_a_resumed_saver_keeps_the_best_so_far_and_the_format_is_checked(tmp_path):
    saver = CheckpointSaver(RunDir(tmp_path), "top1", [VAL], best=80.0)
    assert epochs(saver, [({"val_top1": 75.0}, 1.0)]) == [False] and not (tmp_path / "best.pth").exists()
    with pytest.raises(ValueError, match="a run checkpoint holds"):
        saver.save({k: v for k, v in state(2).items() if k != "bn"}, False)


def test_the_optimizer_is_a_config_field():
    params = [torch.nn.Parameter(torch.zeros(2))]
    c = TrainConfig(shards=["s"], out="o", lr=1e-3, weight_decay=0.1).resolved()
    adam = make_optimizer(params, c)
    assert c.optimizer == "adam" and type(adam) is torch.optim.Adam
    assert adam.defaults["betas"] == (0.5, 0.99) and adam.defaults["weight_decay"] == 0.1
    adamw = make_optimizer(params, TrainConfig(shards=["s"], out="o", optimizer="adamw", lr=1e-3).resolved())
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 1e-3
    with pytest.raises(ConfigError, match="--optimizer 'sgd': choose from adam, adamw"):
        TrainConfig(shards=["s"], out="o", optimizer="sgd").resolved()
