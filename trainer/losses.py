"""Losses, returning their terms (timm distillation style).

Conventions
-----------
* Expert training (Marie et al.)::

      L = CE(f(x~), y) + alpha * KL( softmax g(x) || softmax f(x~) )

  g is the frozen teacher (target distribution), f the student on the compressed crop.
  CE is averaged over the batch.  ``reduction`` applies to the KL term only:

  - ``"sum"`` (default): KL summed over the batch, as in the paper's code.  This is what
    the published alpha (1e-2) was tuned with; the effective per-sample weight is
    alpha x (per-GPU batch size), so alpha depends on the batch size.
  - ``"batchmean"``: KL summed over classes, averaged over the batch (the mathematically
    proper KL); alpha_batchmean = alpha_sum x batch_size gives the same gradients.

  We default to "sum" for paper fidelity: with the paper's alpha and "batchmean" the KL term
  would be ~batch_size times weaker than in the paper.
* Stability training (Zheng et al. 2016)::

      L = CE(f(x), y) + alpha * KL( softmax f(x) || softmax f(x') ),  x' = x + N(0, sigma^2)

  The clean output is the target distribution.  ``detach_clean=False`` (default) lets
  gradients flow through both f(x) and f(x') as in Zheng et al.'s objective;
  ``detach_clean=True`` treats f(x) as a constant target in the KL term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .clitools import UserError

REDUCTIONS = ("sum", "batchmean")


def kl_from_logits(target_logits: torch.Tensor, logits: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KL(softmax(target_logits) || softmax(logits)), computed in float32."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
    log_q = F.log_softmax(logits.float(), dim=1)
    log_p = F.log_softmax(target_logits.float(), dim=1)
    return F.kl_div(log_q, log_p, reduction=reduction, log_target=True)


class LabelError(UserError, ValueError):
    """A class index the model has no output for (shards and model disagree on the classes)."""


#: the one label that means "no label" (a flat folder of images); every other label is a class
UNLABELLED = -1


def check_labels(target: torch.Tensor, n_outputs: int, what: str = "label",
                 ignore_index: int = UNLABELLED) -> torch.Tensor:
    """The mask of labelled samples; :class:`LabelError` for any label that is neither
    ``ignore_index`` nor a class index in [0, n_outputs).  Training and evaluation share this
    rule, so a label such as -7 is never trained as class 0 and evaluated as unlabelled."""
    labelled = target != ignore_index
    bad = labelled & ((target < 0) | (target >= n_outputs))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise LabelError(f"{what} {value} but the model has {n_outputs} outputs (0..{n_outputs - 1}; "
                         f"{ignore_index} means unlabelled): the shards and the model disagree on the classes "
                         "(--num-classes)")
    return labelled


def masked_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = UNLABELLED) -> torch.Tensor:
    """Mean cross-entropy over the samples whose target is not ``ignore_index`` (0 if none)."""
    valid = check_labels(target, logits.shape[1], ignore_index=ignore_index)
    per = F.cross_entropy(logits.float(), target.clamp_min(0), reduction="none") * valid
    return per.sum() / valid.sum().clamp_min(1)


class ExpertLoss(nn.Module):
    """``ExpertLoss(alpha, reduction)(student_logits, teacher_logits, target)``
    -> dict(loss=, ce=, kl=).  Targets equal to ``ignore_index`` (-1, unlabelled) are left
    out of the CE term."""

    def __init__(self, alpha: float = 1e-2, reduction: str = "sum", ignore_index: int = -1):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
        self.alpha, self.reduction, self.ignore_index = float(alpha), reduction, ignore_index

    def forward(self, student_logits, teacher_logits, target):
        ce = masked_ce(student_logits, target, self.ignore_index)
        if teacher_logits is None:
            kl = torch.zeros((), device=student_logits.device)
        else:
            kl = kl_from_logits(teacher_logits.detach(), student_logits, self.reduction)
        loss = ce + self.alpha * kl
        return {"loss": loss, "ce": ce.detach(), "kl": kl.detach()}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, reduction={self.reduction!r}"


class CrossEntropyLoss(nn.Module):
    """``CrossEntropyLoss()(logits, target)`` -> dict(loss=, ce=, kl=0): fine-tuning's loss
    (CE on x~ only), with the same terms as the others so runs log the same columns."""

    def __init__(self, ignore_index: int = -1):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        ce = masked_ce(logits, target, self.ignore_index)
        return {"loss": ce, "ce": ce.detach(), "kl": torch.zeros((), device=logits.device)}


class StabilityLoss(nn.Module):
    """``StabilityLoss(alpha, reduction, detach_clean)(clean_logits, noisy_logits, target)``
    -> dict(loss=, ce=, kl=)."""

    def __init__(self, alpha: float = 5e-3, reduction: str = "sum", detach_clean: bool = False,
                 ignore_index: int = -1):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
        self.alpha, self.reduction, self.detach_clean = float(alpha), reduction, bool(detach_clean)
        self.ignore_index = ignore_index

    def forward(self, clean_logits, noisy_logits, target):
        ce = masked_ce(clean_logits, target, self.ignore_index)
        tgt = clean_logits.detach() if self.detach_clean else clean_logits
        kl = kl_from_logits(tgt, noisy_logits, self.reduction)
        loss = ce + self.alpha * kl
        return {"loss": loss, "ce": ce.detach(), "kl": kl.detach()}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, reduction={self.reduction!r}, detach_clean={self.detach_clean}"
