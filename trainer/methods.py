"""Training methods by name, one class each (like the codec registry): ``get("expert")``.

A method declares what its loss needs from the loader (the compressed crop x̃, the clean
crop x, the teacher g), its defaults (per architecture where the paper gives them), and its
loss on one batch.  Adding a method is one class with ``@register``.

The method vocabulary the reports use (column order, display names, ``expert+teacher``)
is :mod:`trainer.vocab`'s, which needs no torch: it reads the ``@register`` classes below
from this file's source, and a method registered at run time declares itself there.
:class:`Step` (how a batch becomes loss terms: device, autocast, teacher) is the other half
of a method's ``loss``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.registry import Registry

from . import vocab
from .clitools import UserError
from .data import DeviceJpeg
from .losses import CrossEntropyLoss, ExpertLoss, StabilityLoss
from .precision import Precision, fp32
from .vocab import LABEL_SOURCES, TEACHER_LABELS, key, rank, split_key, title

__all__ = ["LABEL_SOURCES", "TEACHER_LABELS", "Method", "MethodError", "Needs", "REGISTRY", "Step", "create", "get",
           "key", "names", "rank", "register", "split_key", "title", "to_input"]


class MethodError(UserError, ValueError):
    """Unknown method or label source (the message lists the known ones)."""


@dataclass(frozen=True)
class Needs:
    """What the loader must produce for a method (and label source)."""
    comp: bool      # x̃, decoded from the transmitted bitstream
    clean: bool     # x, decoded from the clean crop
    teacher: bool   # g(x): from the teacher cache, or a live forward pass on x


class Method:
    """Base class.  Subclasses set the class attributes and implement :meth:`loss`."""

    #: registry name (``--method``)
    name: ClassVar[str]
    #: display name in tables and plots (default: the name)
    title: ClassVar[str]
    #: False for a reference that is evaluated, never trained (pretrained)
    trainable: ClassVar[bool] = True
    #: the loss itself uses g(x) (not only for teacher labels)
    uses_teacher: ClassVar[bool] = False
    #: defaults of the hyper-parameters this method uses (``lr``, ``alpha``, ``sigma``)
    defaults: ClassVar[dict[str, float]] = {}
    #: the same, per architecture, where the paper gives them
    arch_defaults: ClassVar[dict[str, dict[str, float]]] = {}
    #: values the method forces whatever the user says (fine-tuning has no KL term)
    fixed: ClassVar[dict[str, float]] = {}

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def defaults_for(cls, arch: str) -> dict[str, float]:
        return {**cls.defaults, **cls.arch_defaults.get(arch, {}), **cls.fixed}

    #: the f input: the compressed crop (the paper's methods) or the clean one
    def input_key(self) -> str:
        return "comp"

    def needs(self, labels: str, cached_teacher: bool) -> Needs:
        teacher = self.uses_teacher or labels == "teacher"
        clean = self.input_key() == "clean" or (teacher and not cached_teacher)
        return Needs(comp=self.input_key() == "comp", clean=clean, teacher=teacher)

    @property
    def head_only(self) -> bool:
        """Train the classifier head only (the frozen layers stay in eval mode)."""
        return False

    def loss(self, model: nn.Module, batch: dict, step: "Step") -> dict[str, torch.Tensor]:
        """The loss terms on one batch: dict(loss, ce, kl)."""
        raise NotImplementedError(f"method {self.name!r} is not trainable")


# -- a batch's way through the model ------------------------------------------------------------
@dataclass
class Step:
    """How a batch becomes loss terms: the method, the frozen teacher, the device and the
    precision (``trainer.precision``: autocast and layout, shared by the student and a live
    teacher; the loss terms are float32 whatever it is)."""
    method: Method | None = None
    teacher: nn.Module | None = None       # frozen g (None when its logits come from the cache)
    labels: str = "dataset"                # dataset | teacher (arg-max of g(x))
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision | None = None     # None: fp32 on ``device``
    grad_clip: float | None = None
    #: decodes what a ``gpu_jpeg`` loader left undecoded (made on first use, for ``device``)
    jpeg: DeviceJpeg | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.precision is None:
            self.precision = fp32(self.device)

    def decoded(self, batch: dict) -> dict:
        """The batch with its JPEG bitstreams (if a ``gpu_jpeg`` loader left any) decoded on the device."""
        if "comp_jpeg" not in batch:
            return batch
        if self.jpeg is None:
            self.jpeg = DeviceJpeg(self.device)
        return self.jpeg(batch)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,H,W) -> float 0..1 on the device, in the precision's memory layout."""
        return to_input(x, self.device, self.precision.channels_last)

    def autocast(self):
        return self.precision.autocast()

    def teacher_logits(self, batch: dict) -> torch.Tensor:
        """g(x): from the cache when the batch carries it, else the frozen teacher's forward pass."""
        if "teacher" in batch:
            return batch["teacher"].to(self.device, non_blocking=True).float()
        if self.teacher is None:
            raise RuntimeError("this method needs the teacher: neither a cache nor a live teacher was given")
        with torch.no_grad(), self.autocast():
            return self.teacher(self.input(batch["clean"])).float()

    def targets(self, batch: dict, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        if self.labels == "teacher":
            if teacher_logits is None:
                raise RuntimeError("--labels teacher needs the teacher (live or cached)")
            return teacher_logits.argmax(1)
        return batch["label"].to(self.device, non_blocking=True)


def to_input(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A uint8 (N,3,H,W) batch -> float 0..1 on ``device``.  The loader's batches are laid out
    channels_last (N,H,W,3 in memory, as decoded): the copy to the device moves them as they
    are (asynchronously from pinned memory), and the layout the model runs in is made there."""
    x = x.to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()



class _Methods(Registry):
    """The method registry, kept in step with the vocabulary the reports read."""

    def register(self, cls):
        if "title" not in cls.__dict__:
            cls.title = cls.name
        super().register(cls)
        vocab.declare(cls.name, cls.title)
        return cls

    def unregister(self, name: str) -> None:
        super().unregister(name)
        vocab.forget(name)


REGISTRY: Registry[type[Method]] = _Methods("method", MethodError)
register = REGISTRY.register
get = REGISTRY.get


def names(trainable: bool | None = None) -> tuple[str, ...]:
    """Method names in the paper's column order (registration order)."""
    return tuple(c.name for c in REGISTRY if trainable is None or c.trainable == trainable)


# -- the methods, in the paper's column order ---------------------------------------------------
@register
class Pretrained(Method):
    """The initial weights, evaluated on every setting (the paper's first column)."""
    name = "pretrained"
    trainable = False


@register
class Stability(Method):
    """Zheng et al.: ``L = CE(f(x), y) + alpha * KL(softmax f(x) || softmax f(x'))``,
    ``x' = x + N(0, sigma^2)`` on the 0..1 scale; the classifier head only, as in the paper."""
    name = "stability"
    defaults = {"lr": 1e-6, "alpha": 5e-3, "sigma": 4e-2}
    # the paper's values (reference/paper_table1.json, "stability_training")
    arch_defaults = {"mnasnet1_0": {"lr": 1e-6, "alpha": 5e-3, "sigma": 4e-2},
                     "resnet50": {"lr": 1e-7, "alpha": 5e-3, "sigma": 5e-4}}

    def __init__(self, config: Any):
        super().__init__(config)
        self.criterion = StabilityLoss(config.alpha, config.kl_reduction, config.stability_detach_clean)

    def input_key(self) -> str:
        return "clean" if self.config.stability_input == "clean" else "comp"

    @property
    def head_only(self) -> bool:
        return not self.config.stability_full

    def loss(self, model, batch, step):
        t = step.teacher_logits(batch) if step.labels == "teacher" else None
        y = step.targets(batch, t)
        x = step.input(batch[self.input_key()])
        x_noisy = x + self.config.sigma * torch.randn_like(x)
        with step.autocast():
            # one forward for x and x' (one DDP forward per backward; with the default head-only
            # training the frozen backbone is in eval mode, so this equals two separate passes)
            out, out_noisy = model(torch.cat([x, x_noisy])).chunk(2)
        return self.criterion(out, out_noisy, y)


@register
class Finetune(Method):
    """Plain fine-tuning on x̃: ``L = CE(f(x̃), y)``."""
    name = "finetune"
    title = "fine-tune"
    defaults = {"lr": 1e-5}
    fixed = {"alpha": 0.0}

    def __init__(self, config: Any):
        super().__init__(config)
        self.criterion = CrossEntropyLoss()

    def loss(self, model, batch, step):
        t = step.teacher_logits(batch) if step.labels == "teacher" else None
        y = step.targets(batch, t)
        with step.autocast():
            out = model(step.input(batch["comp"]))
        return self.criterion(out, y)


@register
class Expert(Method):
    """Marie et al.: ``L = CE(f(x̃), y) + alpha * KL(softmax g(x) || softmax f(x̃))``, g the
    frozen initial model on the clean crop."""
    name = "expert"
    uses_teacher = True
    # the paper: alpha 1e-2, lr 1e-5 (mnasnet1_0; resnet50 best of 1e-5, 5e-6, 1e-6)
    defaults = {"lr": 1e-5, "alpha": 1e-2}

    def __init__(self, config: Any):
        super().__init__(config)
        self.criterion = ExpertLoss(config.alpha, config.kl_reduction)

    def loss(self, model, batch, step):
        t = step.teacher_logits(batch)
        y = step.targets(batch, t)
        with step.autocast():
            out = model(step.input(batch["comp"]))
        return self.criterion(out, t, y)


def create(config: Any) -> Method:
    """The configured method of a (resolved) training config."""
    cls = get(config.method)
    if not cls.trainable:
        raise MethodError(f"method {config.method!r} is not trained; evaluate its weights with trainer.evaluation")
    return cls(config)
