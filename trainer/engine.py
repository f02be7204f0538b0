"""One training epoch and one evaluation pass (torchvision reference style)."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import ExpertLoss, StabilityLoss
from .utils import Dist, all_reduce_sum

METHODS = ("expert", "finetune", "stability")


@dataclass
class StepConfig:
    """What a training step does."""
    method: str = "expert"                 # expert | finetune | stability
    criterion: nn.Module | None = None     # ExpertLoss or StabilityLoss
    teacher: nn.Module | None = None       # frozen g (None when its logits come from the cache)
    labels: str = "dataset"                # dataset | teacher (arg-max of g(x))
    sigma: float = 0.04                    # stability noise std (0..1 scale)
    stability_input: str = "clean"         # clean (x, as Zheng et al.) | comp (x~)
    head_only: bool = False                # stability: frozen backbone in eval mode
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False                      # bf16 autocast (CUDA)
    channels_last: bool = False
    grad_clip: float | None = None

    def needs_clean(self, cached_teacher: bool) -> bool:
        """Whether the loader must decode the clean crop."""
        if self.method == "stability" and self.stability_input == "clean":
            return True
        need_teacher = self.method == "expert" or self.labels == "teacher"
        return need_teacher and not cached_teacher

    def needs_comp(self) -> bool:
        return not (self.method == "stability" and self.stability_input == "clean")

    def needs_teacher(self) -> bool:
        return self.method == "expert" or self.labels == "teacher"


def to_input(x: torch.Tensor, cfg: StepConfig) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float 0..1 on the device (channels_last on request)."""
    x = x.to(cfg.device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def amp_context(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; nothing elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def autocast(cfg: StepConfig):
    return amp_context(cfg.device, cfg.amp)


def teacher_logits(batch: dict, cfg: StepConfig) -> torch.Tensor | None:
    """g(x): from the cache when the batch carries it, else a forward pass of the frozen teacher."""
    if "teacher" in batch:
        return batch["teacher"].to(cfg.device, non_blocking=True).float()
    if cfg.teacher is None:
        return None
    with torch.no_grad(), autocast(cfg):
        return cfg.teacher(to_input(batch["clean"], cfg)).float()


def compute_loss(model: nn.Module, batch: dict, cfg: StepConfig) -> dict[str, torch.Tensor]:
    """The method's loss terms on one batch: dict(loss, ce, kl)."""
    t = teacher_logits(batch, cfg) if cfg.needs_teacher() else None
    if cfg.labels == "teacher":
        if t is None:
            raise RuntimeError("--labels teacher needs the teacher (live or cached)")
        y = t.argmax(1)
    else:
        y = batch["label"].to(cfg.device, non_blocking=True)
    if cfg.method in ("expert", "finetune"):
        with autocast(cfg):
            out = model(to_input(batch["comp"], cfg))
        return cfg.criterion(out, t if cfg.method == "expert" else None, y)
    if cfg.method == "stability":
        x = to_input(batch["clean"] if cfg.stability_input == "clean" else batch["comp"], cfg)
        x_noisy = x + cfg.sigma * torch.randn_like(x)
        with autocast(cfg):
            # one forward for x and x' (one DDP forward per backward; with the default head-only
            # training the frozen backbone is in eval mode, so this equals two separate passes)
            out, out_noisy = model(torch.cat([x, x_noisy])).chunk(2)
        return cfg.criterion(out, out_noisy, y)
    raise ValueError(f"unknown method {cfg.method!r}")


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader, cfg: StepConfig,
                    n_batches: int, epoch: int, d: Dist | None = None, progress: bool = True,
                    log_every: int = 0, logger=None) -> dict[str, float]:
    """One pass over ``n_batches`` batches; returns mean loss/ce/kl over all ranks, images/s."""
    from .models import set_train_mode
    d = d or Dist()
    set_train_mode(model, cfg.head_only)
    if cfg.teacher is not None:
        cfg.teacher.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    n_img, steps = 0, 0
    bar = None
    if progress and d.main:
        from tqdm import tqdm
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    for batch in loader:
        terms = compute_loss(model, batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        bs = int(batch["label"].shape[0])
        vals = torch.stack([terms["loss"].detach(), terms["ce"], terms["kl"]]).double().cpu()
        sums += vals * bs
        n_img += bs
        steps += 1
        if bar is not None:
            dt = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{vals[0].item():.4f}", img_s=f"{n_img * d.world / max(dt, 1e-9):.1f}")
        if logger is not None and log_every and steps % log_every == 0:
            logger({"epoch": epoch, "step": steps, "loss": vals[0].item(), "ce": vals[1].item(), "kl": vals[2].item()})
        if steps >= n_batches:
            break
    if cfg.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    tot = all_reduce_sum(sums.tolist() + [float(n_img)], d)
    n = max(tot[3], 1.0)
    return {"loss": tot[0] / n, "ce": tot[1] / n, "kl": tot[2] / n, "images": tot[3], "steps": steps,
            "seconds": dt, "images_per_s": tot[3] / max(dt, 1e-9)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: StepConfig, d: Dist | None = None, progress: bool = False,
             desc: str = "eval", present: list[int] | None = None) -> dict[str, Any]:
    """CE loss, top-1 and top-5 (percent) of model(x~) over the labelled samples (label >= 0),
    summed over all ranks.  ``present``: the class indices that occur in the data (e.g. the
    10 Imagenette classes of a 1000-way model); ``top1_present`` is then the top-1 with the
    arg-max taken over those classes only, which separates robustness to the input from
    learning which classes occur."""
    d = d or Dist()
    model.eval()
    loss_sum, c1, c5, n, total, cp = 0.0, 0, 0, 0, 0, 0
    subset = torch.tensor(sorted(present), device=cfg.device) if present else None
    bar = None
    if progress and d.main:
        from tqdm import tqdm
        bar = tqdm(desc=desc, unit="img", dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["comp"] if "comp" in batch else batch["clean"]
        with autocast(cfg):
            out = model(to_input(x, cfg)).float()
        y = batch["label"].to(cfg.device)
        valid = y >= 0
        total += int(y.numel())
        if valid.any():
            o, yv = out[valid], y[valid]
            loss_sum += float(F.cross_entropy(o, yv, reduction="sum"))
            k = min(5, o.shape[1])
            topk = o.topk(k, dim=1).indices
            hit = topk == yv[:, None]
            c1 += int(hit[:, 0].sum())
            c5 += int(hit.any(1).sum())
            n += int(yv.numel())
            if subset is not None:
                cp += int((subset[o[:, subset].argmax(1)] == yv).sum())
        if bar is not None:
            bar.update(int(y.numel()))
    if bar is not None:
        bar.close()
    loss_sum, c1, c5, n, total, cp = all_reduce_sum([loss_sum, c1, c5, n, total, cp], d)
    dt = time.perf_counter() - t0
    nan = float("nan")
    return {"loss": loss_sum / n if n else nan, "top1": 100.0 * c1 / n if n else nan,
            "top5": 100.0 * c5 / n if n else nan, "count": int(total), "labelled": int(n),
            "top1_present": 100.0 * cp / n if n and subset is not None else None,
            "seconds": dt}


def make_criterion(method: str, alpha: float, reduction: str = "sum", detach_clean: bool = False) -> nn.Module:
    if method == "expert":
        return ExpertLoss(alpha, reduction)
    if method == "finetune":
        return ExpertLoss(0.0, reduction)
    if method == "stability":
        return StabilityLoss(alpha, reduction, detach_clean)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def is_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
