"""The optimizer by name (``--optimizer``) and the learning-rate schedule of a run.

The paper trains with Adam, betas (0.5, 0.99), weight decay 0, and divides the LR by 5 when
the validation loss has not improved for 3 consecutive epochs.  An optimizer is one class
with ``@register``: its ``name``, and how it is built from the parameters and the config
(``lr``, ``betas``, ``weight_decay``).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from pipeline.registry import Registry

from .clitools import UserError


class OptimizerError(UserError, ValueError):
    """An unknown optimizer name (the message lists the known ones)."""


class Optimizer:
    """Base class: ``build`` returns the torch optimizer of the trainable parameters; the
    base builds ``torch_class`` with --lr, --betas and --weight-decay."""
    name: ClassVar[str]
    torch_class: ClassVar[type[torch.optim.Optimizer]]

    @classmethod
    def build(cls, params, c: Any) -> torch.optim.Optimizer:
        return cls.torch_class(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)


REGISTRY: Registry[type[Optimizer]] = Registry("optimizer", OptimizerError)
register = REGISTRY.register


@register
class Adam(Optimizer):
    """The paper's: Adam with --betas (0.5, 0.99) and L2 --weight-decay."""
    name = "adam"
    torch_class = torch.optim.Adam


@register
class AdamW(Optimizer):
    """Adam with decoupled --weight-decay (Loshchilov and Hutter)."""
    name = "adamw"
    torch_class = torch.optim.AdamW


def names() -> tuple[str, ...]:
    return tuple(REGISTRY.names())


def make_optimizer(params, c: Any) -> torch.optim.Optimizer:
    """The configured optimizer (``c.optimizer``) over ``params``."""
    return REGISTRY.get(c.optimizer).build(params, c)


def make_scheduler(optimizer, c: Any) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    # torch reduces when num_bad_epochs > patience, i.e. on the (patience+1)-th bad epoch;
    # "divide by 5 when the val loss has not improved for 3 consecutive epochs" = patience 2.
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=c.lr_factor,
                                                      patience=max(0, c.lr_patience - 1), min_lr=c.min_lr)
