"""``train(config) -> TrainResult``: one training run, top to bottom.

The run folder's files and what they mean are :mod:`trainer.rundir`'s.
With ``resume="auto"`` (or a path) a killed run continues from its last completed epoch;
with the same seed a resumed CPU run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.atomic import make_folder

from . import checkpoint, labelspace, loop, methods, precision
from .clitools import UserError
from .config import TrainConfig, yaml_text
from .data import (LoaderSpec, check_classes, check_skips, default_workers, describe, group_shards, make_eval_loader,
                   make_train_loader, use_gpu_jpeg)
from .distributed import barrier, init_distributed, mix_seed, seed_everything
from .data.mixing import asked_shares, check_mixable, setting_weights, shares
from .eval_cache import LAST_EPOCH, TRAIN_LOSS, selection_record
from .models import build_model, freeze_all_but_head, norm_layers
from .rundir import RunDir
from .teacher_cache import resolve_caches

log = logging.getLogger("trainer.run")

#: what a run checkpoint holds (plain types only: it is read back with weights_only=True)
#: "selected_on": what chose the checkpoint (``trainer.eval_cache.selection_record``, LAST_EPOCH or
#: TRAIN_LOSS); trainer.eval flags a score on the same images (missing in older checkpoints: unknown);
#: "trained_on" and "bn": what it was trained on and how (:func:`trained_on`; read back with
#: ``trainer.checkpoint.training_settings`` and ``bn_mode``); "precision": the precision it was
#: trained in (``trainer.precision``: fp32 or bf16; missing in older checkpoints)
CHECKPOINT_KEYS = ("model", "arch", "num_classes", "epoch", "optimizer", "scheduler", "args", "best_metric",
                   "selected_on", "trained_on", "bn", "precision")


def trained_on(sets, weights: list[float]) -> list[dict]:
    """The checkpoint's ``trained_on``: per training setting folder, in the order trained on,
    its setting, rate and asked weight (read back with :func:`trainer.checkpoint.training_settings`)."""
    out = []
    for s, w in zip(sets, weights):
        crop = (s.manifest.get("crop") or {}).get("center_crop")
        side = crop if isinstance(crop, int) else None
        out.append({"setting": s.name, "codec": s.codec, "q": s.q, "bytes_per_image": s.manifest.mean("bytes"),
                    "bpp": s.manifest.mean("bpp"), "pixels_per_image": side * side if side else None,
                    "weight": float(w)})
    return out


@dataclass
class TrainResult:
    out: Path
    config: TrainConfig                                  # resolved
    rows: list[dict] = field(default_factory=list)       # one per epoch, as in metrics.jsonl
    best_metric: float | None = None
    val: dict = field(default_factory=dict)              # the last validation

    @property
    def best(self) -> Path:
        return RunDir(self.out).best


def make_scheduler(optimizer, c: TrainConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    # torch reduces when num_bad_epochs > patience, i.e. on the (patience+1)-th bad epoch;
    # "divide by 5 when the val loss has not improved for 3 consecutive epochs" = patience 2.
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=c.lr_factor,
                                                      patience=max(0, c.lr_patience - 1), min_lr=c.min_lr)


def _resume_checkpoint(c: TrainConfig, run: RunDir) -> tuple[str | None, dict | None]:
    resume = c.resume
    if resume == "auto":
        resume = str(run.last) if run.last.exists() else None
    if not resume:
        return None, None
    ckpt = checkpoint.load(resume)
    if not isinstance(ckpt, dict) or not set(CHECKPOINT_KEYS[:6]) <= set(ckpt):
        raise checkpoint.CheckpointError(f"{resume}: not a run checkpoint (needs {', '.join(CHECKPOINT_KEYS[:6])})")
    if ckpt.get("arch") != c.arch:
        raise checkpoint.CheckpointError(f"{resume}: arch {ckpt.get('arch')} != --arch {c.arch}")
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise checkpoint.CheckpointError(f"{resume}: epoch {epoch!r} is not a whole number")
    return resume, ckpt


def _restore(resume: str, ckpt: dict, model, optimizer, scheduler) -> None:
    try:
        model.net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise checkpoint.CheckpointError(f"{resume}: does not fit this run ({text[:200]})") from None


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'm2m-expert[tensorboard]'") from None
    return SummaryWriter(str(run.tensorboard))


def _check_finite(model, when: str) -> None:
    """Refuse to go on (and to save) with a non-finite weight or buffer."""
    for name, t in model.net.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise loop.DivergedError(f"{when}: {name} holds non-finite values: training diverged (a learning rate "
                                     "too high?); the model was not saved")


def train(config: TrainConfig) -> TrainResult:
    """Train one model on compressed shards (expert training, fine-tuning or stability)."""
    c = config.resolved()
    if c.threads:
        torch.set_num_threads(c.threads)
    out = Path(c.out)
    d = init_distributed(c.device)
    cuda = d.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True    # fixed 224² inputs: let cuDNN pick its fastest kernels
    run = RunDir(out)
    resume, ckpt = _resume_checkpoint(c, run)

    train_sets = group_shards(c.shards, in_order=True)
    check_mixable(train_sets)
    weights = setting_weights(train_sets, c.setting_weights)
    val_sets = group_shards(c.val_shards) if c.val_shards else []
    space = labelspace.check(train_sets + val_sets, labelspace.of_model(ckpt or {}), resume, same_count=train_sets)
    n_classes = c.num_classes or train_sets[0].num_classes
    check_classes(train_sets + val_sets, n_classes)
    classes = train_sets[0].manifest.get("classes")
    # what the run learnt from the shards (args.json, and the checkpoint's "args")
    # the worker count shapes the epoch plan (which worker reads which shard): args.yaml records
    # the number used, so that --config repeats the run's data order on another machine too
    auto_workers = c.workers is None
    workers = default_workers() if auto_workers else c.workers
    # the precision likewise: args.yaml records the one used (auto decided here: fp32 or bf16)
    prec = precision.resolve(c.precision, d.device)
    c = dataclasses.replace(c, workers=workers, precision=prec.name)
    info = {"num_classes": n_classes, "trained_on": ",".join(sorted({s.name for s in train_sets})),
            "classes": classes if (n_classes != 1000 and isinstance(classes, list) and len(classes) == n_classes)
            else None, "world_size": d.world, "label_space": space, "precision_choice": prec.choice}
    if d.main:
        make_folder(out, "run folder")
        log.info("%s", prec.describe())
        if ckpt is not None and ckpt.get("precision") not in (None, prec.name):
            log.warning("resuming a run trained in %s at %s", ckpt.get("precision"), prec.name)
        log.info("train: %s; %d loader worker(s) per rank%s", describe(train_sets), workers,
                 " (from the CPU count)" if auto_workers else "")
        if val_sets:
            log.info("val: %s", describe(val_sets))
        if len(train_sets) > 1:
            log.info("settings mixed in every batch, asked shares: %s", ", ".join(
                f"{k} {v:.1f}%" for k, v in asked_shares([s.name for s in train_sets], weights).items()))
    writer = _tensorboard(run) if c.tensorboard and d.main else None
    barrier(d)

    # model, frozen teacher (a copy of the initial weights, kept outside DDP)
    seed_everything(c.seed)
    model = build_model(c.arch, c.weights, n_classes)
    if c.bn == "frozen" and not norm_layers(model):
        log.warning("--bn frozen: %s has no normalisation layers with running statistics; nothing to freeze", c.arch)
    method = methods.create(c)
    step = loop.Step(method=method, labels=c.labels, device=d.device, precision=prec, grad_clip=c.grad_clip)
    caches = None
    if method.needs(c.labels, cached_teacher=False).teacher:
        # the teacher runs in the student's precision, live or cached (the cache records it)
        teacher = prec.prepare(copy.deepcopy(model).eval().requires_grad_(False).to(d.device))
        caches = resolve_caches(train_sets, teacher, c.arch, c.weights, c.teacher_cache,
                                fallback_root=out / "teacher-cache", d=d, batch_size=c.val_batch_size,
                                workers=workers, device=d.device, precision=prec, progress=c.progress,
                                max_skip=c.max_skip)
        step.teacher = None if caches is not None else teacher
    needs = method.needs(c.labels, cached_teacher=caches is not None)
    info["teacher_cached"] = caches is not None
    model = prec.prepare(model.to(d.device))
    params = freeze_all_but_head(model) if method.head_only else list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
    scheduler = make_scheduler(optimizer, c)

    start_epoch, best = 0, None
    if ckpt is not None:
        _restore(resume, ckpt, model, optimizer, scheduler)
        start_epoch, best = ckpt["epoch"], ckpt.get("best_metric")
        if d.main:
            log.info("resumed from %s at epoch %d", resume, start_epoch)

    train_model = model
    if d.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if cuda else None, find_unused_parameters=False)

    args = {**c.to_dict(), **info}
    rows: list[dict] = []
    if d.main:
        rows = run.start(c.to_dict(), args, yaml_text(c.to_dict()), keep_before=start_epoch)

    spec = LoaderSpec(batch_size=c.batch_size, workers=workers, shuffle_buffer=c.shuffle_buffer,
                      resampled=c.resampled, seed=c.seed,
                      gpu_jpeg=c.gpu_decode and use_gpu_jpeg(train_sets, d.device, needs.comp, "training"))
    val_gpu_jpeg = c.gpu_decode and bool(val_sets) and use_gpu_jpeg(val_sets, d.device, True, "validation", quiet=True)
    last_val: dict = {}
    names, mixed = [s.name for s in train_sets], len(train_sets) > 1
    if val_sets:
        best_on = selection_record(val_sets, "val_top1" if c.best_metric == "top1" else "val_loss")
    else:  # the lowest train loss: the last epoch of a one-epoch run, never the evaluation images
        best_on = TRAIN_LOSS
    for epoch in range(start_epoch, c.epochs):
        torch.manual_seed(mix_seed(c.seed, epoch, d.rank, 3))  # dropout / noise: depends on the epoch only
        loader, n_batches = make_train_loader(train_sets, spec, epoch=epoch, rank=d.rank, world=d.world,
                                              need_comp=needs.comp, need_clean=needs.clean, caches=caches,
                                              limit=c.train_limit, steps=c.steps_per_epoch, pin_memory=cuda,
                                              weights=weights)
        tr = loop.train_one_epoch(train_model, optimizer, loader, step, n_batches, epoch, d, c.progress,
                                  c.log_every, logger=(lambda r: log.info("%s", r)) if d.main else None,
                                  settings=names if mixed else None, bn=c.bn)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": tr["loss"], "train_ce": tr["ce"],
               "train_kl": tr["kl"], "train_images": tr["images"], "train_skipped": tr["skipped"],
               "images_per_s": tr["images_per_s"], "train_seconds": tr["seconds"]}
        if mixed:   # the realised share of each setting in this epoch (percent of the images)
            row["train_share"] = {k: round(v, 3) for k, v in shares(tr["setting_images"]).items()}
        metric = tr["loss"]
        if val_sets:
            vl = make_eval_loader(val_sets, c.val_batch_size, workers=workers, rank=d.rank, world=d.world,
                                  limit=c.val_limit, pin_memory=cuda, gpu_jpeg=val_gpu_jpeg)
            last_val = loop.evaluate(model, vl, step, d, desc="validation")
            row.update({"val_loss": last_val["loss"], "val_top1": last_val["top1"], "val_top5": last_val["top5"],
                        "val_count": last_val["count"], "val_skipped": last_val["skipped"]})
            metric = last_val["loss"] if math.isfinite(last_val["loss"]) else tr["loss"]
        scheduler.step(metric)
        score = row.get("val_top1") if (c.best_metric == "top1" and val_sets) else -metric
        improved = score is not None and math.isfinite(score) and (best is None or score > best)
        if improved:
            best = score
        if d.main:
            rows.append(row)
            run.add_epoch(row, rows)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                        writer.add_scalar(k, v, epoch)
                writer.flush()
        # a run that lost too much data fails before its checkpoint could be mistaken for a good one
        check_skips(tr["skipped"], int(tr["images"]), c.max_skip, f"epoch {epoch} training", tr["skip_reasons"])
        if val_sets:
            check_skips(last_val["skipped"], last_val["count"], c.max_skip, f"epoch {epoch} validation",
                        last_val["skip_reasons"])
        _check_finite(model, f"epoch {epoch}")
        if d.main:
            state = {"model": model.net.state_dict(), "arch": c.arch, "num_classes": n_classes, "epoch": epoch + 1,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "args": args, "best_metric": best, "metrics": row,
                     "trained_on": trained_on(train_sets, weights), "bn": c.bn, "precision": prec.name}
            checkpoint.save({**state, "selected_on": LAST_EPOCH}, run.last)
            if improved:
                checkpoint.save({**state, "selected_on": best_on}, run.best)
            log.info("epoch %d: %s", epoch, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in row.items()))
        barrier(d)
    if d.main:
        run.finish()
    if writer is not None:
        writer.close()
    if d.enabled:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return TrainResult(out=out, config=c, rows=rows, best_metric=best, val=last_val)
