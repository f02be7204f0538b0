"""``train(config) -> TrainResult``: one training run, top to bottom: setup (the processes,
the shards, the model and its teacher, the optimizer), the epochs, the checkpoints.

The run folder's files and what they mean are :mod:`trainer.rundir`'s; what a checkpoint
holds, and which epoch is saved as ``best.pth``, :mod:`trainer.checkpoint`'s.
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
from .checkpoint import CheckpointSaver, RESUME_KEYS, trained_on
from .clitools import UserError
from .config import TrainConfig, yaml_text
from .data import (LoaderSpec, ShardSet, check_classes, check_skips, default_workers, describe, group_shards,
                   make_eval_loader, make_train_loader, use_gpu_jpeg)
from .data.mixing import asked_shares, check_mixable, setting_weights, shares
from .distributed import Dist, barrier, init_distributed, mix_seed, seed_everything
from .models import Classifier, build_model, freeze_all_but_head, norm_layers
from .optim import make_optimizer, make_scheduler
from .rundir import RunDir
from .teacher_cache import resolve_caches

log = logging.getLogger("trainer.run")


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


def train(config: TrainConfig) -> TrainResult:
    """Train one model on compressed shards (expert training, fine-tuning or stability)."""
    # setup: the processes, the shards, the model and its teacher, the optimizer
    c = config.resolved()
    if c.threads:
        torch.set_num_threads(c.threads)
    d = init_distributed(c.device)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True    # fixed 224² inputs: let cuDNN pick its fastest kernels
    run = RunDir(c.out)
    resume, ckpt = _resume_checkpoint(c, run)
    data = Shards.read(c, d, resume, ckpt)
    if ckpt is not None:
        check_same_training(resume, ckpt, c, data)
    # the worker count shapes the epoch plan (which worker reads which shard): args.yaml records
    # the number used, so that --config repeats the run's data order on another machine too
    from_cpus = c.workers is None
    # the precision likewise: args.yaml records the one used (auto decided here: fp32 or bf16)
    prec = precision.resolve(c.precision, d.device)
    c = dataclasses.replace(c, workers=default_workers() if from_cpus else c.workers, precision=prec.name)
    data.info["precision_choice"] = prec.choice
    if d.main:
        make_folder(run.path, "run folder")
        log.info("%s", prec.describe())
        if ckpt is not None and ckpt.get("precision") not in (None, prec.name):
            log.warning("resuming a run trained in %s at %s", ckpt.get("precision"), prec.name)
        data.announce(c.workers, from_cpus)
    writer = _tensorboard(run) if c.tensorboard and d.main else None
    barrier(d)
    model, step, caches = _model(c, d, data, run, prec)
    optimizer = make_optimizer(freeze_all_but_head(model) if step.method.head_only else list(model.parameters()), c)
    scheduler = make_scheduler(optimizer, c)
    start_epoch, best = _restore(resume, ckpt, model, optimizer, scheduler, d)
    train_model = model if not d.enabled else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[d.local_rank] if d.device.type == "cuda" else None, find_unused_parameters=False)
    args = {**c.to_dict(), **data.info}
    rows = run.start(c.to_dict(), args, yaml_text(c.to_dict()), keep_before=start_epoch) if d.main else []
    epochs = Epochs(c, d, data, step, caches)
    saver = CheckpointSaver(run, c.best_metric, data.val, best)
    # the epochs, each saved
    last_val: dict = {}
    for epoch in range(start_epoch, c.epochs):
        row, tr, last_val = epochs.run(epoch, train_model, model, optimizer)
        loss = last_val["loss"] if data.val and math.isfinite(last_val["loss"]) else tr["loss"]
        scheduler.step(loss)
        improved = saver.update(row, loss)
        if d.main:
            rows.append(row)
            run.add_epoch(row, rows)
            _log_scalars(writer, row, epoch)
        # a run that lost too much data fails before its checkpoint could be mistaken for a good one
        epochs.check(epoch, tr, last_val, model)
        if d.main:
            saver.save({"model": model.net.state_dict(), "arch": c.arch, "num_classes": data.num_classes,
                        "epoch": epoch + 1, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "args": args, "metrics": row, "trained_on": trained_on(data.train, data.weights),
                        "bn": c.bn, "precision": prec.name}, improved)
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
    return TrainResult(out=Path(c.out), config=c, rows=rows, best_metric=saver.best, val=last_val)


# -- setup --------------------------------------------------------------------------------------
@dataclass
class Shards:
    """What a run reads: its training settings (in the order given) with their weights, its
    validation settings, its class count, and what it learnt from them (``args.json``)."""
    train: list[ShardSet]
    weights: list[float]
    val: list[ShardSet]
    num_classes: int
    info: dict

    @classmethod
    def read(cls, c: TrainConfig, d: Dist, resume: str | None, ckpt: dict | None) -> "Shards":
        train_sets = group_shards(c.shards, in_order=True)
        check_mixable(train_sets)
        weights = setting_weights(train_sets, c.setting_weights)
        val_sets = group_shards(c.val_shards) if c.val_shards else []
        space = labelspace.check(train_sets + val_sets, labelspace.of_model(ckpt or {}), resume, same_count=train_sets)
        n_classes = c.num_classes or train_sets[0].num_classes
        check_classes(train_sets + val_sets, n_classes)
        classes = train_sets[0].manifest.get("classes")
        info = {"num_classes": n_classes,
                "trained_on": ",".join(sorted({s.name for s, w in zip(train_sets, weights) if w > 0})),
                "classes": classes if (n_classes != 1000 and isinstance(classes, list) and len(classes) == n_classes)
                else None, "world_size": d.world, "label_space": space}
        return cls(train_sets, weights, val_sets, n_classes, info)

    @property
    def mixed(self) -> bool:
        return len(self.train) > 1

    def announce(self, workers: int, from_cpus: bool) -> None:
        log.info("train: %s; %d loader worker(s) per rank%s", describe(self.train), workers,
                 " (from the CPU count)" if from_cpus else "")
        if self.val:
            log.info("val: %s", describe(self.val))
        if self.mixed:
            log.info("settings mixed in every batch, asked shares: %s", ", ".join(
                f"{k} {v:.1f}%" for k, v in asked_shares([s.name for s in self.train], self.weights).items()))


def _model(c: TrainConfig, d: Dist, data: Shards, run: RunDir,
           prec: precision.Precision) -> tuple[Classifier, loop.Step, list | None]:
    """The model on its device, the step (method, frozen teacher: a copy of the initial weights,
    kept outside DDP) and the teacher caches (None: the live teacher, or none needed)."""
    seed_everything(c.seed)
    model = build_model(c.arch, c.weights, data.num_classes)
    if c.bn == "frozen" and not norm_layers(model):
        log.warning("--bn frozen: %s has no normalisation layers with running statistics; nothing to freeze", c.arch)
    method = methods.create(c)
    step = loop.Step(method=method, labels=c.labels, device=d.device, precision=prec, grad_clip=c.grad_clip)
    caches = None
    if method.needs(c.labels, cached_teacher=False).teacher:
        # the teacher runs in the student's precision, live or cached (the cache records it)
        teacher = prec.prepare(copy.deepcopy(model).eval().requires_grad_(False).to(d.device))
        caches = resolve_caches(data.train, teacher, c.arch, c.weights, c.teacher_cache,
                                fallback_root=run.path / "teacher-cache", d=d, batch_size=c.val_batch_size,
                                workers=c.workers, device=d.device, precision=prec, progress=c.progress,
                                max_skip=c.max_skip)
        step.teacher = None if caches is not None else teacher
    data.info["teacher_cached"] = caches is not None
    return prec.prepare(model.to(d.device)), step, caches


def _resume_checkpoint(c: TrainConfig, run: RunDir) -> tuple[str | None, dict | None]:
    resume = c.resume
    if resume == "auto":
        resume = str(run.last) if run.last.exists() else None
    if not resume:
        return None, None
    ckpt = checkpoint.load(resume)
    if not isinstance(ckpt, dict) or not set(RESUME_KEYS) <= set(ckpt):
        raise checkpoint.CheckpointError(f"{resume}: not a run checkpoint (needs {', '.join(RESUME_KEYS)})")
    if ckpt.get("arch") != c.arch:
        raise checkpoint.CheckpointError(f"{resume}: arch {ckpt.get('arch')} != --arch {c.arch}")
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise checkpoint.CheckpointError(f"{resume}: epoch {epoch!r} is not a whole number")
    return resume, ckpt


#: the options that say what a run trains on and how; a resumed run must keep them (its
#: settings and their weights are compared from ``trained_on``)
TRAINS_ON = ("arch", "weights", "num_classes", "method", "alpha", "kl_reduction", "labels", "bn", "sigma",
             "stability_input", "stability_detach_clean", "stability_full")


def check_same_training(resume: str, ckpt: dict, c: TrainConfig, data: "Shards") -> None:
    """Refuse to resume a checkpoint trained on something else than this run would train on
    (one line naming each difference), unless ``--resume-changed``: the checkpoint would then
    say it was trained on the new settings alone."""
    was = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    now = {**c.to_dict(), "num_classes": data.num_classes}
    changed = [f"--{k.replace('_', '-')} {was[k]!r} -> {now[k]!r}" for k in TRAINS_ON
               if k in was and was[k] != now[k]]
    before = {e["setting"]: e.get("weight") for e in checkpoint.training_settings(ckpt)}
    after = {e["setting"]: e["weight"] for e in trained_on(data.train, data.weights)}
    if before and before != after:
        def shown(m):
            return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else k for k, v in m.items())
        changed.append(f"settings {shown(before)} -> {shown(after)}")
    if not changed:
        return
    if c.resume_changed:
        log.warning("--resume-changed: resuming %s although %s", resume, "; ".join(changed))
        return
    raise checkpoint.CheckpointError(f"{resume}: this run would train on something else than the checkpoint "
                                     f"({'; '.join(changed)}); start a new --out, or give --resume-changed")


def _restore(resume: str | None, ckpt: dict | None, model, optimizer, scheduler, d: Dist) -> tuple[int, float | None]:
    """(the first epoch to run, the best score so far): (0, None) for a new run."""
    if ckpt is None:
        return 0, None
    try:
        model.net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise checkpoint.CheckpointError(f"{resume}: does not fit this run ({text[:200]})") from None
    if d.main:
        log.info("resumed from %s at epoch %d", resume, ckpt["epoch"])
    return ckpt["epoch"], ckpt.get("best_metric")


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'm2m-expert[tensorboard]'") from None
    return SummaryWriter(str(run.tensorboard))


def _log_scalars(writer, row: dict, epoch: int) -> None:
    if writer is None:
        return
    for k, v in row.items():
        if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
            writer.add_scalar(k, v, epoch)
    writer.flush()


# -- an epoch -----------------------------------------------------------------------------------
class Epochs:
    """One epoch of training and validation, and the checks it must pass before it is saved."""

    def __init__(self, c: TrainConfig, d: Dist, data: Shards, step: loop.Step, caches: list | None):
        self.c, self.d, self.data, self.step, self.caches = c, d, data, step, caches
        self.needs = step.method.needs(c.labels, cached_teacher=caches is not None)
        cuda = d.device.type == "cuda"
        self.spec = LoaderSpec(batch_size=c.batch_size, workers=c.workers, shuffle_buffer=c.shuffle_buffer,
                               resampled=c.resampled, seed=c.seed, gpu_jpeg=c.gpu_decode and use_gpu_jpeg(
                                   data.train, d.device, self.needs.comp, "training"))
        self.val_gpu_jpeg = c.gpu_decode and bool(data.val) and use_gpu_jpeg(data.val, d.device, True, "validation",
                                                                                quiet=True)

    def run(self, epoch: int, train_model, model, optimizer) -> tuple[dict, dict, dict]:
        """(the epoch's row, the training pass, the validation: {} without validation shards)."""
        c, d, data, cuda = self.c, self.d, self.data, self.d.device.type == "cuda"
        torch.manual_seed(mix_seed(c.seed, epoch, d.rank, 3))  # dropout / noise: depends on the epoch only
        loader, n_batches = make_train_loader(data.train, self.spec, epoch=epoch, rank=d.rank, world=d.world,
                                              need_comp=self.needs.comp, need_clean=self.needs.clean,
                                              caches=self.caches, limit=c.train_limit, steps=c.steps_per_epoch,
                                              pin_memory=cuda, weights=data.weights)
        tr = loop.train_one_epoch(train_model, optimizer, loader, self.step, n_batches, epoch, d, c.progress,
                                  c.log_every, logger=(lambda r: log.info("%s", r)) if d.main else None,
                                  settings=[s.name for s in data.train] if data.mixed else None, bn=c.bn)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": tr["loss"], "train_ce": tr["ce"],
               "train_kl": tr["kl"], "train_images": tr["images"], "train_skipped": tr["skipped"],
               "images_per_s": tr["images_per_s"], "train_seconds": tr["seconds"]}
        if data.mixed:   # the realised share of each setting in this epoch (percent of the images)
            row["train_share"] = {k: round(v, 3) for k, v in shares(tr["setting_images"]).items()}
        val: dict = {}
        if data.val:
            vl = make_eval_loader(data.val, c.val_batch_size, workers=c.workers, rank=d.rank, world=d.world,
                                  limit=c.val_limit, pin_memory=cuda, gpu_jpeg=self.val_gpu_jpeg)
            val = loop.evaluate(model, vl, self.step, d, desc="validation")
            row.update({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                        "val_count": val["count"], "val_skipped": val["skipped"]})
        return row, tr, val

    def check(self, epoch: int, tr: dict, val: dict, model) -> None:
        """Fail on an epoch that lost more than ``max_skip`` of its data, or on a non-finite
        weight or buffer (the model is then not saved)."""
        check_skips(tr["skipped"], int(tr["images"]), self.c.max_skip, f"epoch {epoch} training", tr["skip_reasons"])
        if self.data.val:
            check_skips(val["skipped"], val["count"], self.c.max_skip, f"epoch {epoch} validation",
                        val["skip_reasons"])
        for name, t in model.net.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise loop.DivergedError(f"epoch {epoch}: {name} holds non-finite values: training diverged (a "
                                         "learning rate too high?); the model was not saved")
