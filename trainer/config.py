"""Typed configurations of a training run and an evaluation: what the Python API takes and
the command lines fill in.  Each field carries its help text, range and command-line spelling
(:mod:`trainer.options`): the commands' options are made from them, and every config is
checked against them, once.

    from trainer import TrainConfig, train
    result = train(TrainConfig(shards=["shards/train/j2k-200/*.tar"], arch="resnet50",
                               weights="DEFAULT", out="runs/r50-j2k200"))

A run folder keeps its resolved configuration as ``args.yaml`` (timm style: ``python -m
trainer.run --config runs/x/args.yaml`` repeats the run; options on the command line
override the file) and as ``args.json`` (with what the run learnt: ``trained_on``,
``classes``, ``world_size`` ...), which the reports read.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import options as O
from .losses import REDUCTIONS
from .methods import get as get_method, names as method_names
from .optim import names as optimizer_names
from .options import ConfigError, check_ranges, check_types, flag, opt
from .precision import upgrade_legacy
from .vocab import BN_MODES, LABEL_SOURCES

#: the largest batch: it sizes the loader's buffers (65,536 x 224² x 3 bytes = 9.9 GB)
MAX_BATCH = 1 << 16

__all__ = ["ConfigError", "EvalConfig", "TeacherCacheConfig", "TrainConfig", "read_yaml", "yaml_text"]


@dataclass
class TrainConfig:
    # data
    shards: list[str] = O.shards("Training shards: globs / brace patterns / folders (several allowed).")
    val_shards: list[str] | None = opt(None, help="Validation shards (default: no validation).")
    batch_size: int = opt(32, low=1, high=MAX_BATCH, help="Per-process batch size.")
    val_batch_size: int | None = opt(None, low=1, high=MAX_BATCH, help="Default: 2 x batch size.")
    workers: int | None = O.workers()
    shuffle_buffer: int = opt(1000, low=0, high=10**7)
    resampled: bool = opt(False, help="Draw shards with replacement (any shard count works).")
    train_limit: int | None = opt(None, low=1, help="Samples per epoch (quick runs; default: the manifest's).")
    val_limit: int | None = opt(None, low=1, help="Validation samples (default: all).")
    steps_per_epoch: int | None = opt(None, low=1, help="Cap on optimisation steps per epoch.")
    max_skip: float = O.max_skip("an epoch")
    setting_weights: Any = opt(None, metavar="SETTING=W,...",
                               help="Several settings in --shards: each sample's setting is drawn with these weights "
                                    "(default: equal shares); every batch mixes them.")
    gpu_decode: bool = opt(False, help="JPEG settings on CUDA: decode the bitstreams on the GPU (nvJPEG) instead of "
                                       "in the loader workers.")
    # model and method
    method: str = opt("expert", choices=lambda: method_names(trainable=True))
    arch: str = opt("resnet50")
    weights: str | None = opt(None, help="Torchvision weights name (DEFAULT, IMAGENET1K_V1 ...) or a file.")
    num_classes: int | None = O.num_classes("Default: the manifest's num_classes.")
    alpha: float | None = opt(None, low=0, optional=False,
                              help="KL weight (expert 1e-2, stability 5e-3; fine-tuning has none).")
    kl_reduction: str = opt("sum", choices=REDUCTIONS, help="KL over the batch: sum (the paper's code) or batchmean.")
    labels: str = opt("dataset", choices=LABEL_SOURCES,
                      help="CE targets: the dataset's labels, or the teacher's arg-max on the clean crop (label-free).")
    bn: str = opt("train", choices=BN_MODES,
                  help="Normalisation layers in training: train (batch statistics, running statistics updated: the "
                       "paper's code) or frozen (eval mode: the pretrained running statistics are used and kept; "
                       "the affine weights still train).")
    teacher_cache: str = opt("auto", help="auto (beside the shards; built when missing) | off (live teacher) | PATH "
                                          "(.npy or folder).")
    sigma: float | None = opt(None, low=0, help="Stability noise std on the 0..1 scale.")
    stability_input: str = opt("clean", choices=("clean", "comp"),
                               help="Stability input x: the clean crop or the compressed one.")
    stability_detach_clean: bool = opt(False, help="Stop gradients through f(x) in the stability KL.")
    stability_full: bool = opt(False, help="Stability: train all layers (default: the head, as the paper).")
    # optimisation (the paper's defaults)
    epochs: int = opt(45, low=1, high=10**6)
    optimizer: str = opt("adam", choices=optimizer_names,
                         help="Built from --lr, --betas and --weight-decay; adam is the paper's.")
    lr: float | None = opt(None, low=0, low_open=True, optional=False,
                           help="Default: the method's (expert 1e-5; stability per arch).")
    betas: tuple[float, float] = opt((0.5, 0.99))
    weight_decay: float = opt(0.0, low=0)
    lr_factor: float = opt(0.2, low=0, low_open=True, high=1, help="LR multiplier on plateau (0.2 = /5).")
    lr_patience: int = opt(3, low=1, high=10**6, help="Decay after this many consecutive epochs without val-loss improvement.")
    min_lr: float = opt(0.0, low=0)
    grad_clip: float | None = opt(None, low=0, low_open=True)
    best_metric: str = opt("top1", choices=("top1", "loss"), help="best.pth: highest val top-1 or lowest val loss.")
    # run
    out: str | None = opt(None, help="Run folder.")
    resume: str | None = opt(None, help="'auto' (OUT/last.pth when present) or a checkpoint path.")
    resume_changed: bool = opt(False, help="Resume although what the run trains on changed (its settings and their "
                                           "weights, --method, --alpha, --bn ...): refused without it.")
    seed: int = O.seed()
    device: str = O.device()
    precision: str = O.precision()
    threads: int | None = O.threads()
    progress: bool = O.progress()
    log_every: int = opt(0, low=0, help="Also log the train loss every N steps.")
    tensorboard: bool = opt(False, help="Also log the epoch metrics to OUT/tensorboard/ (needs tensorboard).")

    def resolved(self) -> "TrainConfig":
        """A checked copy with the method's defaults filled in (per architecture)."""
        c = dataclasses.replace(self, shards=_paths(self.shards, "shards", twice="refuse"),
                                val_shards=(_paths(self.val_shards, "val_shards", twice="refuse")
                                            if self.val_shards else None),
                                betas=tuple(self.betas))
        cls = get_method(c.method)
        if not cls.trainable:
            raise ConfigError(f"--method {c.method}: not a training method (choose from "
                              f"{', '.join(method_names(trainable=True))})")
        defaults = cls.defaults_for(c.arch)
        for name, value in defaults.items():
            given = getattr(c, name)
            if name in cls.fixed and given not in (None, value):
                import logging
                logging.getLogger("trainer").warning("--method %s ignores --%s %s", c.method, name, given)
                given = None
            if given is None:
                setattr(c, name, value)
        c.alpha = 0.0 if c.alpha is None else c.alpha
        from .data.mixing import parse_weights
        c.setting_weights = parse_weights(c.setting_weights)
        if c.val_batch_size is None:
            c.val_batch_size = 2 * c.batch_size
        c.check()
        return c

    def check(self) -> None:
        if not self.shards:
            raise ConfigError("no training shards: give --shards")
        if self.out in (None, ""):
            raise ConfigError("no run folder: give --out")
        check_ranges(self)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ConfigError(f"--betas {self.betas}: two numbers in [0, 1)")
        _device(self)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        return cls(**_known(cls, data, source))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_yaml(path), str(path))


@dataclass
class EvalConfig:
    shards: list[str] = O.shards("Globs / brace patterns; grouped by folder = setting.", required=True)
    checkpoints: list[str] = opt(factory=list, flag="--checkpoint", help="Run checkpoint(s) (best.pth / last.pth).")
    weights: list[str] = opt(factory=list, help="Plain weights file(s) or torchvision weights names (need --arch).")
    arch: str | None = opt(None, help="Architecture of plain --weights.")
    num_classes: int | None = O.num_classes()
    out: str | None = opt("results.json", help="JSON results (CSV written next to it).")
    overwrite: bool = opt(False, help="Replace --out instead of merging rows into it.")
    batch_size: int = opt(64, low=1, high=MAX_BATCH)
    workers: int | None = O.workers()
    limit: int | None = opt(None, low=1, help="Samples per setting (quick checks).")
    max_skip: float = O.max_skip("a setting")
    device: str = O.device()
    threads: int | None = O.threads()
    precision: str = O.precision()
    progress: bool = O.progress()
    cache: bool = opt(True, help="Reuse the results of (model, setting) pairs evaluated before with the same bytes "
                                 "and options.")
    cache_dir: str | None = opt(None, help="Where cached results live (default: eval-cache/ beside --out).")
    force: bool = opt(False, help="Evaluate again what the cache holds (and refresh it).")
    groups: Any = opt(factory=dict, flag="--group", metavar="NAME=CLASS,...", multiple=True,
                      help="A class group scored apart (class folder names, ImageNet wnids or indices); repeatable.")
    classes: list[str] = opt(factory=list, metavar="FILE",
                             help="Groups from a file: NAME=CLASS,... lines, or one class a line (the group is the "
                                  "file's name); repeatable.")

    def resolved(self) -> "EvalConfig":
        """A checked copy; the groups of ``classes`` files are merged into ``groups``."""
        from .groups import normalise
        c = dataclasses.replace(self, shards=_paths(self.shards, "shards"),
                                checkpoints=_paths(self.checkpoints, "checkpoints", twice="drop"),
                                weights=_paths(self.weights, "weights", twice="drop"),
                                groups=normalise(self.groups, _paths(self.classes, "classes")), classes=[])
        if not c.shards:
            raise ConfigError("no shards to evaluate on: give --shards")
        if not c.checkpoints and not c.weights:
            raise ConfigError("nothing to evaluate: give --checkpoint and/or --arch with --weights")
        if c.weights and not c.arch:
            raise ConfigError("--weights needs --arch")
        check_ranges(c)
        _device(c)
        return c

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "EvalConfig":
        return cls(**_known(cls, data, source))


@dataclass
class TeacherCacheConfig:
    """``trainer.teacher_cache``: the teacher's logits on every clean crop of the settings."""
    shards: list[str] = O.shards("Shard globs / brace patterns (grouped by folder).", required=True)
    arch: str | None = opt(None, required=True, help="Architecture of the teacher (the model trained from).")
    weights: str | None = opt(None, help="Torchvision weights name, or a weights / checkpoint file.")
    num_classes: int | None = O.num_classes()
    out: str | None = opt(None, help="Write caches under OUT/<setting>/ instead of beside the shards.")
    batch_size: int = opt(64, low=1, high=MAX_BATCH)
    workers: int | None = O.workers()
    device: str = O.device()
    precision: str = O.precision()
    max_skip: float = O.max_skip("a setting")
    force: bool = opt(False, help="Rebuild even when a valid cache exists.")
    progress: bool = O.progress()

    def resolved(self) -> "TeacherCacheConfig":
        c = dataclasses.replace(self, shards=_paths(self.shards, "shards"))
        if not c.shards:
            raise ConfigError("no shards: give --shards")
        check_ranges(c)
        _device(c)
        return c


# -- checks -------------------------------------------------------------------------------------
def _paths(value, name: str, twice: str | None = None) -> list[str]:
    """The paths of a list option.  ``twice``: what a path given twice (under any spelling:
    ``sub/a``, ``./sub/a``, ``sub/a/``) gets: ``"refuse"`` (a setting trained on twice is a
    mistake, not a weight), ``"drop"`` (the later ones, said in the log: a checkpoint scored
    twice would be two rows), or None (kept)."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{flag(name)}: expected a list of paths, got {value!r}")
    paths = [str(v) for v in value]
    if twice is None:
        return paths
    seen: dict[str, str] = {}
    out = []
    for p in paths:
        key = os.path.realpath(p) if os.path.exists(p) else os.path.normpath(os.path.abspath(p))
        if key not in seen:
            seen[key] = p
            out.append(p)
        elif twice == "refuse":
            raise ConfigError(f"{flag(name)}: {p} is listed twice ({seen[key]} and {p}); give each setting once "
                              "(--setting-weights weighs them)")
        else:
            import logging
            logging.getLogger("trainer").warning("%s: %s is %s, given already: evaluated once", flag(name), p,
                                                 seen[key])
    return out


def _device(c) -> None:
    """The device, then the precision on it (bf16 where the device has none is refused now,
    before anything runs: ``trainer.precision.PrecisionError``, exit status 2)."""
    from .distributed import DeviceError, resolve_device
    from .precision import check_choice
    try:
        resolve_device(c.device)
    except DeviceError as exc:
        raise ConfigError(str(exc)) from None
    check_choice(c.precision, c.device)


def _known(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of option names to values")
    names = {f.name for f in fields(cls)}
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    if "precision" in names:    # an older run's amp / channels_last
        data = upgrade_legacy(data, source, ConfigError)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
    check_types(cls, data, source, ConfigError)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping (safe loader: plain data only)."""
    from pipeline.bounded import BoundedReadError, read_yaml as bounded_yaml

    p = Path(path)
    try:
        data = bounded_yaml(p, "YAML file")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except BoundedReadError as exc:
        raise ConfigError(str(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of option names to values")
    return data


def yaml_text(data: dict[str, Any]) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
