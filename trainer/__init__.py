"""Expert training on compressed shards: the Python API under the ``trainer.run`` and
``trainer.evaluation`` commands.

    from trainer import TrainConfig, EvalConfig, train, evaluate
    result = train(TrainConfig(shards=["shards/train/j2k-200/*.tar"], arch="resnet50",
                               weights="DEFAULT", out="runs/r50-j2k200"))
    rows = evaluate(EvalConfig(checkpoints=[str(result.best)], shards=["shards/val/*/*.tar"]))

Where things live: ``config.py`` (the typed configs) and ``options.py`` (the options made from
their fields), ``methods.py`` (one class per training method, and ``Step``), ``vocab.py``
(the method names and titles, no torch), ``losses.py``, ``loop.py`` (``train_one_epoch``,
``evaluate``), ``optim.py`` (the optimizer by name, the LR schedule), ``data/`` (the
streaming shard loader), ``rundir.py`` (a run folder's files), ``teacher_cache.py``,
``models.py`` (architectures by name), ``checkpoint.py`` (checkpoints and their saver),
``precision.py`` (``--precision``: autocast and layout, decided once),
``training.py`` / ``evaluation.py`` (a run, an evaluation and its command), ``run.py`` (the
training command); ``reports/`` (Table 1, figures, retention, the recommender) sits above the
rest and reads what it wrote.  The map: trainer/README.md.
"""
from __future__ import annotations

__all__ = ["TrainConfig", "EvalConfig", "TrainResult", "train", "evaluate"]

_LAZY = {"TrainConfig": "config", "EvalConfig": "config", "TrainResult": "training", "train": "training",
         "evaluate": "evaluation"}


def __getattr__(name: str):
    # imported on first use, so that `python -m trainer.reports.report` & co. do not pay for torch
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
