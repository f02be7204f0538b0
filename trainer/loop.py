"""One training epoch and one evaluation pass (torchvision reference style).

Both add up what the loader skipped (``batch["skips"]``), so the caller can report it and
fail a run that loses too much data (``trainer.data.check_skips``).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import Dist, all_reduce_sum
from .clitools import UserError
from .losses import check_labels
from .methods import Step

log = logging.getLogger(__name__)

#: how many skip reasons a result keeps (the counts are complete)
MAX_REASONS = 20


class DivergedError(UserError, FloatingPointError):
    """A non-finite loss or weight: the run stops before such a model can be saved."""


class Skips:
    """Adds up the skip records that ride on the batches."""

    def __init__(self):
        self.count, self.reasons = 0, []

    def add(self, batch: dict) -> None:
        for n, reason in batch.get("skips") or ():
            self.count += int(n)
            if len(self.reasons) < MAX_REASONS:
                self.reasons.append(reason)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader, step: Step,
                    n_batches: int, epoch: int, d: Dist | None = None, progress: bool = True,
                    log_every: int = 0, logger=None, settings: list[str] | None = None,
                    bn: str = "train") -> dict[str, Any]:
    """One pass over the loader (``n_batches`` batches); returns the mean loss/ce/kl over all
    ranks, images/s and the samples the loader skipped.  ``settings`` (a mixed run): also the
    images of each setting over all ranks (``setting_images``).  ``bn``: see
    :func:`trainer.models.set_train_mode`."""
    from .models import set_train_mode
    d = d or Dist()
    set_train_mode(model, step.method.head_only, bn)
    per_setting = dict.fromkeys(settings or (), 0)
    if step.teacher is not None:
        step.teacher.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    n_img, steps = 0, 0
    skips = Skips()
    bar = None
    if progress and d.main:
        from tqdm import tqdm
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    for batch in loader:
        batch = step.decoded(batch)
        skips.add(batch)
        if batch["label"].numel() == 0:  # only skip records
            continue
        terms = step.method.loss(model, batch, step)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if step.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
        optimizer.step()
        bs = int(batch["label"].shape[0])
        for name in batch.get("setting") or ():
            if name in per_setting:
                per_setting[name] += 1
        vals = torch.stack([terms["loss"].detach(), terms["ce"], terms["kl"]]).double().cpu()
        if not bool(torch.isfinite(vals).all()):
            raise DivergedError(f"epoch {epoch}, step {steps + 1}: the loss is {vals[0].item()} (ce {vals[1].item()}, "
                                f"kl {vals[2].item()}): training diverged (a learning rate too high?); "
                                "nothing of this epoch was saved")
        sums += vals * bs
        n_img += bs
        steps += 1
        if bar is not None:
            dt = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{vals[0].item():.4f}", img_s=f"{n_img * d.world / max(dt, 1e-9):.1f}")
        if logger is not None and log_every and steps % log_every == 0:
            logger({"epoch": epoch, "step": steps, "loss": vals[0].item(), "ce": vals[1].item(), "kl": vals[2].item()})
    if step.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    names = list(per_setting)
    tot = all_reduce_sum(sums.tolist() + [float(n_img), float(skips.count)] + [float(per_setting[k]) for k in names], d)
    n = max(tot[3], 1.0)
    return {"setting_images": {k: int(v) for k, v in zip(names, tot[5:])},
            "loss": tot[0] / n, "ce": tot[1] / n, "kl": tot[2] / n, "images": tot[3], "steps": steps,
            "seconds": dt, "images_per_s": tot[3] / max(dt, 1e-9), "skipped": int(tot[4]),
            "skip_reasons": skips.reasons}


class Tally:
    """Sums over one scored population of an evaluation: CE loss, top-1 and top-5 hits,
    the count, and the top-1 with the arg-max restricted to ``classes`` (None: not scored)."""

    def __init__(self, classes: list[int] | None = None, device=None):
        self.classes = torch.tensor(sorted(classes), device=device) if classes else None
        self.sums = [0.0, 0, 0, 0, 0]   # loss, top-1 hits, top-5 hits, n, restricted top-1 hits

    def add(self, o: torch.Tensor, y: torch.Tensor) -> None:
        if y.numel() == 0:
            return
        hit = o.topk(min(5, o.shape[1]), dim=1).indices == y[:, None]
        self.sums[0] += float(F.cross_entropy(o, y, reduction="sum"))
        self.sums[1] += int(hit[:, 0].sum())
        self.sums[2] += int(hit.any(1).sum())
        self.sums[3] += int(y.numel())
        if self.classes is not None:
            self.sums[4] += int((self.classes[o[:, self.classes].argmax(1)] == y).sum())

    def result(self, sums: list[float] | None = None) -> dict[str, Any]:
        """Percentages of (all-reduced) ``sums``; NaN when nothing was scored."""
        loss, c1, c5, n, cp = self.sums if sums is None else sums
        nan = float("nan")
        return {"loss": loss / n if n else nan, "top1": 100.0 * c1 / n if n else nan,
                "top5": 100.0 * c5 / n if n else nan, "labelled": int(n),
                "top1_present": 100.0 * cp / n if n and self.classes is not None else None}


@torch.no_grad()
def evaluate(model: nn.Module, loader, step: Step, d: Dist | None = None, progress: bool = False,
             desc: str = "eval", present: list[int] | None = None,
             groups: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """CE loss, top-1 and top-5 (percent) of model(x~) over the labelled samples (label >= 0),
    summed over all ranks.  ``present``: the class indices that occur in the data (e.g. the
    10 Imagenette classes of a 1000-way model); ``top1_present`` is then the top-1 with the
    arg-max taken over those classes only, which separates robustness to the input from
    learning which classes occur.  ``groups``: name -> class indices; ``result["groups"][name]``
    holds the same scores over the samples of those classes only, its ``top1_present`` with
    the arg-max over the group's classes (one pass over the data for all groups)."""
    d = d or Dist()
    model.eval()
    total = Tally(present, step.device)
    tallies = {name: Tally(classes, step.device) for name, classes in (groups or {}).items()}
    members = {name: torch.tensor(sorted(classes), device=step.device) for name, classes in (groups or {}).items()}
    count = 0
    skips = Skips()
    bar = None
    if progress and d.main:
        from tqdm import tqdm
        bar = tqdm(desc=desc, unit="img", dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    for batch in loader:
        batch = step.decoded(batch)
        skips.add(batch)
        if batch["label"].numel() == 0:  # only skip records
            continue
        x = batch["comp"] if "comp" in batch else batch["clean"]
        with step.autocast():
            out = model(step.input(x)).float()
        y = batch["label"].to(step.device)
        valid = check_labels(y, out.shape[1], f"{desc}: label")
        count += int(y.numel())
        if valid.any():
            o, yv = out[valid], y[valid]
            total.add(o, yv)
            for name, tally in tallies.items():
                mine = torch.isin(yv, members[name])
                tally.add(o[mine], yv[mine])
        if bar is not None:
            bar.update(int(y.numel()))
    if bar is not None:
        bar.close()
    names = list(tallies)
    sums = all_reduce_sum(total.sums + [count, skips.count] + [v for n in names for v in tallies[n].sums], d)
    dt = time.perf_counter() - t0
    result = total.result(sums[:5])
    result.update({"count": int(sums[5]), "skipped": int(sums[6]), "skip_reasons": skips.reasons, "seconds": dt})
    if tallies:
        result["groups"] = {n: tallies[n].result(sums[7 + 5 * i: 12 + 5 * i]) for i, n in enumerate(names)}
    return result
