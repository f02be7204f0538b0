"""Typed configurations of a training run and an evaluation: what the Python API takes and
the command lines fill in.  The ranges of every numeric option are checked here, once.

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
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.classes import MAX_CLASSES

from .clitools import UserError
from .losses import REDUCTIONS
from .optiontypes import check_types
from .methods import LABEL_SOURCES, get as get_method, names as method_names


class ConfigError(UserError, ValueError):
    """An option outside its range, or a bad config file (the message names it)."""


@dataclass
class TrainConfig:
    # data
    shards: list[str] = field(default_factory=list)   # globs / brace patterns / folders
    val_shards: list[str] | None = None                # default: no validation
    batch_size: int = 32                               # per process
    val_batch_size: int | None = None                  # default: 2 x batch_size
    workers: int | None = None                         # loader processes per rank; None: from the CPU count
    shuffle_buffer: int = 1000
    resampled: bool = False                            # draw shards with replacement
    train_limit: int | None = None                     # samples per epoch (quick runs)
    val_limit: int | None = None
    steps_per_epoch: int | None = None
    max_skip: float = 0.01                             # largest fraction of samples that may be skipped
    gpu_decode: bool = False                           # JPEG settings: decode on the GPU (nvJPEG), not in the workers
    # model and method
    method: str = "expert"
    arch: str = "resnet50"
    weights: str | None = None                         # torchvision weights name or a file
    num_classes: int | None = None                     # default: the manifest's
    alpha: float | None = None                         # default: the method's
    kl_reduction: str = "sum"
    labels: str = "dataset"                            # dataset | teacher
    teacher_cache: str = "auto"                        # auto | off | PATH
    sigma: float | None = None                         # stability noise std (0..1 scale)
    stability_input: str = "clean"
    stability_detach_clean: bool = False
    stability_full: bool = False
    # optimisation (the paper's defaults)
    epochs: int = 45
    lr: float | None = None                            # default: the method's (per arch)
    betas: tuple[float, float] = (0.5, 0.99)
    weight_decay: float = 0.0
    lr_factor: float = 0.2
    lr_patience: int = 3
    min_lr: float = 0.0
    grad_clip: float | None = None
    best_metric: str = "top1"                          # top1 | loss
    # run
    out: str | None = None
    resume: str | None = None                          # auto | a checkpoint path
    seed: int = 0
    device: str = "auto"
    amp: bool = True                                   # bf16 autocast on CUDA
    channels_last: bool = True                         # on CUDA
    threads: int | None = None
    progress: bool = True
    log_every: int = 0
    tensorboard: bool = False                          # also log to OUT/tensorboard/

    def resolved(self) -> "TrainConfig":
        """A checked copy with the method's defaults filled in (per architecture)."""
        c = dataclasses.replace(self, shards=_paths(self.shards, "shards"),
                                val_shards=_paths(self.val_shards, "val_shards") if self.val_shards else None,
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
        if c.val_batch_size is None:
            c.val_batch_size = 2 * c.batch_size
        c.check()
        return c

    def check(self) -> None:
        if not self.shards:
            raise ConfigError("no training shards: give --shards")
        if self.out in (None, ""):
            raise ConfigError("no run folder: give --out")
        _whole(self, "batch_size", 1)
        _whole(self, "val_batch_size", 1, optional=True)
        _whole(self, "workers", 0, optional=True)
        _whole(self, "shuffle_buffer", 0)
        _whole(self, "train_limit", 1, optional=True)
        _whole(self, "val_limit", 1, optional=True)
        _whole(self, "steps_per_epoch", 1, optional=True)
        _whole(self, "num_classes", 1, optional=True)
        _whole(self, "epochs", 1)
        _whole(self, "lr_patience", 1)
        _whole(self, "seed", 0)
        _whole(self, "threads", 1, optional=True)
        _whole(self, "log_every", 0)
        _number(self, "max_skip", 0, 1)
        _number(self, "lr", 0, None, low_open=True)
        _number(self, "alpha", 0, None)
        _number(self, "sigma", 0, None, optional=True)
        _number(self, "weight_decay", 0, None)
        _number(self, "lr_factor", 0, 1, low_open=True)
        _number(self, "min_lr", 0, None)
        _number(self, "grad_clip", 0, None, low_open=True, optional=True)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ConfigError(f"--betas {self.betas}: two numbers in [0, 1)")
        _choice(self, "kl_reduction", REDUCTIONS)
        _choice(self, "labels", LABEL_SOURCES)
        _choice(self, "stability_input", ("clean", "comp"))
        _choice(self, "best_metric", ("top1", "loss"))
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
    shards: list[str] = field(default_factory=list)    # globs / brace patterns; one folder = one setting
    checkpoints: list[str] = field(default_factory=list)  # run checkpoints (best.pth / last.pth)
    weights: list[str] = field(default_factory=list)   # plain weights files or torchvision names (need arch)
    arch: str | None = None
    num_classes: int | None = None
    out: str | None = "results.json"                   # JSON results (CSV beside it); None: not written
    overwrite: bool = False                            # replace --out instead of merging rows into it
    batch_size: int = 64
    workers: int | None = None                         # loader processes; None: from the CPU count
    limit: int | None = None                           # samples per setting (quick checks)
    max_skip: float = 0.01
    device: str = "auto"
    threads: int | None = None
    amp: bool = True
    progress: bool = True
    cache: bool = True                                 # reuse unchanged (model, setting) results (eval_cache)
    cache_dir: str | None = None                       # default: eval-cache/ beside out
    force: bool = False                                # evaluate again even what the cache holds
    groups: Any = field(default_factory=dict)         # class groups scored apart: {NAME: [class, ...]}
    classes: list[str] = field(default_factory=list)   # files of groups (trainer/groups.py)

    def resolved(self) -> "EvalConfig":
        """A checked copy; the groups of ``classes`` files are merged into ``groups``."""
        from .groups import normalise
        c = dataclasses.replace(self, shards=_paths(self.shards, "shards"),
                                checkpoints=_paths(self.checkpoints, "checkpoints"),
                                weights=_paths(self.weights, "weights"),
                                groups=normalise(self.groups, _paths(self.classes, "classes")), classes=[])
        if not c.shards:
            raise ConfigError("no shards to evaluate on: give --shards")
        if not c.checkpoints and not c.weights:
            raise ConfigError("nothing to evaluate: give --checkpoint and/or --arch with --weights")
        if c.weights and not c.arch:
            raise ConfigError("--weights needs --arch")
        _whole(c, "batch_size", 1)
        _whole(c, "workers", 0, optional=True)
        _whole(c, "limit", 1, optional=True)
        _whole(c, "num_classes", 1, optional=True)
        _whole(c, "threads", 1, optional=True)
        _number(c, "max_skip", 0, 1)
        _device(c)
        return c

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "EvalConfig":
        return cls(**_known(cls, data, source))


# -- checks -------------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _paths(value, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{_flag(name)}: expected a list of paths, got {value!r}")
    return [str(v) for v in value]


#: upper bounds of whole-number options: each sizes an allocation, a loop or a seed
HIGH = {"seed": 2**63 - 1, "batch_size": 1 << 16, "val_batch_size": 1 << 16, "workers": 256, "threads": 4096,
        "shuffle_buffer": 10**7, "num_classes": MAX_CLASSES, "epochs": 10**6, "lr_patience": 10**6}
#: the bound of the others (sample counts, steps)
HIGH_DEFAULT = 10**12


def _whole(c, name: str, low: int, optional: bool = False) -> None:
    v = getattr(c, name)
    if v is None and optional:
        return
    high = HIGH.get(name, HIGH_DEFAULT)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        shown = repr(v) if len(repr(v)) <= 24 else repr(v)[:21] + "..."
        raise ConfigError(f"{_flag(name)} {shown}: must be a whole number >= {low} and <= {high:,}")


def _number(c, name: str, low: float | None, high: float | None, low_open: bool = False,
            optional: bool = False) -> None:
    v = getattr(c, name)
    if v is None and optional:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)
    if not ok:
        rng = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise ConfigError(f"{_flag(name)} {v!r}: must be a finite number {rng}")


def _device(c) -> None:
    from .distributed import DeviceError, resolve_device
    try:
        resolve_device(c.device)
    except DeviceError as exc:
        raise ConfigError(str(exc)) from None


def _choice(c, name: str, choices) -> None:
    if getattr(c, name) not in choices:
        raise ConfigError(f"{_flag(name)} {getattr(c, name)!r}: choose from {', '.join(choices)}")


def _known(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of option names to values")
    names = {f.name for f in fields(cls)}
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
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
