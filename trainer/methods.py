"""Training methods by name, one class each (like the codec registry): ``get("expert")``.

A method declares what its loss needs from the loader (the compressed crop x̃, the clean
crop x, the teacher g), its defaults (per architecture where the paper gives them), and its
loss on one batch.  Adding a method is one class with ``@register``.

This module also owns the method vocabulary the reports use: the paper's column order,
display names, and the one key that tells a run trained on teacher labels apart
(``expert+teacher``, shown "expert (teacher labels)").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from pipeline.registry import Registry

from .clitools import UserError
from .losses import CrossEntropyLoss, ExpertLoss, StabilityLoss

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Step

#: where the CE targets come from: the dataset's labels, or g's arg-max on the clean crop
LABEL_SOURCES = ("dataset", "teacher")
#: appended to a method's name for runs trained on teacher labels (reports, recommend, summaries)
TEACHER_LABELS = "+teacher"


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
    #: display name in tables and plots
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


REGISTRY: Registry[type[Method]] = Registry("method", MethodError)
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
    title = "pretrained"
    trainable = False


@register
class Stability(Method):
    """Zheng et al.: ``L = CE(f(x), y) + alpha * KL(softmax f(x) || softmax f(x'))``,
    ``x' = x + N(0, sigma^2)`` on the 0..1 scale; the classifier head only, as in the paper."""
    name = "stability"
    title = "stability"
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
    title = "expert"
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
        raise MethodError(f"method {config.method!r} is not trained; evaluate its weights with trainer.eval")
    return cls(config)


# -- the vocabulary of the reports ---------------------------------------------------------------
def key(method: str, labels: str | None = None) -> str:
    """``("expert", "teacher")`` -> ``"expert+teacher"``: a run on teacher labels is its own method."""
    return method + TEACHER_LABELS if labels == "teacher" else method


def split_key(k: str) -> tuple[str, str]:
    """``"expert+teacher"`` -> ``("expert", "teacher")``; ``"expert"`` -> ``("expert", "dataset")``."""
    if k.endswith(TEACHER_LABELS):
        return k[: -len(TEACHER_LABELS)], "teacher"
    return k, "dataset"


def title(k: str) -> str:
    """Display name of a method key: "fine-tune", "expert (teacher labels)"."""
    base, labels = split_key(k)
    name = REGISTRY.get(base).title if base in REGISTRY else base
    return f"{name} (teacher labels)" if labels == "teacher" else name


def rank(k: str) -> tuple[int, int, str]:
    """Sort key: the paper's order, each teacher-label variant after the dataset-label block."""
    base, labels = split_key(k)
    order = names()
    return (int(labels == "teacher"), order.index(base) if base in order else len(order), base)
