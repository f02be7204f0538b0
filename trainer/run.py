"""Train a classifier on compressed shards: expert training, fine-tuning or stability training.

    python -m trainer.run --shards 'shards/train/j2k-200/*.tar' --val-shards 'shards/val/j2k-200/*.tar' \\
        --method expert --arch resnet50 --weights DEFAULT --alpha 1e-2 --lr 1e-5 --epochs 45 --out runs/r50-j2k200
    torchrun --nproc-per-node 8 -m trainer.run ...        # same code, DDP

Run folder: args.json (resolved config), metrics.jsonl + summary.csv (one row per epoch),
last.pth / best.pth (atomic).  ``--resume auto`` (or a path) continues a killed run from the
last completed epoch; with the same seed a resumed CPU run ends with the same weights as an
uninterrupted one.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, engine
from .cache_teacher import resolve_caches
from .data import LoaderSpec, group_settings, make_eval_loader, make_train_loader, settings_summary
from .models import build_model, freeze_all_but_head, load_state_dict_file
from .utils import Dist, atomic_write_text, barrier, init_distributed, mix_seed, seed_everything

log = logging.getLogger("trainer.run")

# Paper defaults (reference/paper_table1.json): stability training per arch
STABILITY_DEFAULTS = {"mnasnet1_0": {"lr": 1e-6, "alpha": 5e-3, "sigma": 4e-2},
                      "resnet50": {"lr": 1e-7, "alpha": 5e-3, "sigma": 5e-4}}


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m trainer.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("data")
    g.add_argument("--shards", nargs="+", required=True, help="training shards: globs / brace patterns / folders")
    g.add_argument("--val-shards", nargs="+", default=None, help="validation shards (default: no validation)")
    g.add_argument("--batch-size", type=int, default=32, help="per-process batch size (default 32)")
    g.add_argument("--val-batch-size", type=int, default=None, help="default: 2 x batch size")
    g.add_argument("--workers", type=int, default=4, help="loader processes per rank (default 4)")
    g.add_argument("--shuffle-buffer", type=int, default=1000, help="samples in the shuffle buffer (default 1000)")
    g.add_argument("--resampled", action="store_true", help="draw shards with replacement (any shard count works)")
    g.add_argument("--train-limit", type=int, default=None, help="samples per epoch (quick runs; default: manifest count)")
    g.add_argument("--val-limit", type=int, default=None, help="validation samples (default: all)")
    g.add_argument("--steps-per-epoch", type=int, default=None, help="cap on optimisation steps per epoch")
    g = ap.add_argument_group("model and method")
    g.add_argument("--method", choices=engine.METHODS, default="expert")
    g.add_argument("--arch", default="resnet50")
    g.add_argument("--weights", default=None, help="torchvision weights name (DEFAULT, IMAGENET1K_V1...) or a file")
    g.add_argument("--num-classes", type=int, default=None, help="default: the manifest's num_classes")
    g.add_argument("--alpha", type=float, default=None,
                   help="KL weight (expert default 1e-2; stability default 5e-3; forced 0 for finetune)")
    g.add_argument("--kl-reduction", choices=("sum", "batchmean"), default="sum",
                   help="KL over the batch: sum (paper's code, default) or batchmean")
    g.add_argument("--labels", choices=("dataset", "teacher"), default="dataset",
                   help="CE targets: dataset labels or the teacher's arg-max on the clean crop (label-free)")
    g.add_argument("--teacher-cache", default="auto",
                   help="auto (beside the shards; built when missing) | off (live teacher) | PATH (.npy or folder)")
    g.add_argument("--sigma", type=float, default=None, help="stability noise std on the 0..1 scale (default 0.04)")
    g.add_argument("--stability-input", choices=("clean", "comp"), default="clean",
                   help="stability training input x: the clean crop (default) or the compressed one")
    g.add_argument("--stability-detach-clean", action="store_true",
                   help="stop gradients through f(x) in the stability KL term")
    g.add_argument("--stability-full", action="store_true",
                   help="stability: train all layers (default: classifier head only, as the paper)")
    g = ap.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=45)
    g.add_argument("--lr", type=float, default=None, help="default 1e-5 (stability: paper value per arch, else 1e-6)")
    g.add_argument("--betas", type=float, nargs=2, default=(0.5, 0.99))
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--lr-factor", type=float, default=0.2, help="LR multiplier on plateau (default 0.2 = /5)")
    g.add_argument("--lr-patience", type=int, default=3,
                   help="decay after this many consecutive epochs without val-loss improvement (default 3)")
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=None)
    g.add_argument("--best-metric", choices=("top1", "loss"), default="top1",
                   help="best.pth: highest val top-1 (default) or lowest val loss")
    g = ap.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder")
    g.add_argument("--resume", default=None, help="'auto' (OUT/last.pth when present) or a checkpoint path")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="disable bf16 autocast on CUDA")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g.add_argument("--log-every", type=int, default=0, help="also log the train loss every N steps")
    return ap


def resolve_args(a: argparse.Namespace) -> argparse.Namespace:
    st = STABILITY_DEFAULTS.get(a.arch, {})
    if a.method == "finetune":
        if a.alpha not in (None, 0, 0.0):
            log.warning("--method finetune ignores --alpha %s", a.alpha)
        a.alpha = 0.0
    elif a.alpha is None:
        a.alpha = st.get("alpha", 5e-3) if a.method == "stability" else 1e-2
    if a.lr is None:
        a.lr = st.get("lr", 1e-6) if a.method == "stability" else 1e-5
    if a.sigma is None:
        a.sigma = st.get("sigma", 4e-2)
    if a.val_batch_size is None:
        a.val_batch_size = 2 * a.batch_size
    return a


def _jsonable(a: argparse.Namespace) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()}


def _write_summary(out: Path, rows: list[dict]) -> None:
    if not rows:
        return
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    tmp = out / ".summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "summary.csv")


def _read_metrics(out: Path) -> list[dict]:
    p = out / "metrics.jsonl"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a half-written last line of a killed run
    return rows


def make_scheduler(optimizer, a) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    # torch reduces when num_bad_epochs > patience, i.e. on the (patience+1)-th bad epoch;
    # "divide by 5 when the val loss has not improved for 3 consecutive epochs" = patience 2.
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=a.lr_factor,
                                                      patience=max(0, a.lr_patience - 1), min_lr=a.min_lr)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = resolve_args(get_args_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    d = init_distributed(a.device)
    cuda = d.device.type == "cuda"
    out = Path(a.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(d)

    train_settings = group_settings(a.shards)
    val_settings = group_settings(a.val_shards) if a.val_shards else []
    n_classes = a.num_classes or train_settings[0].num_classes
    a.num_classes = n_classes
    a.trained_on = ",".join(sorted({s.name for s in train_settings}))
    classes = train_settings[0].manifest.get("classes")
    a.classes = classes if (n_classes != 1000 and isinstance(classes, list) and len(classes) == n_classes) else None
    a.world_size = d.world
    if d.main:
        log.info("train: %s", settings_summary(train_settings))
        if val_settings:
            log.info("val: %s", settings_summary(val_settings))

    # model, frozen teacher (copy of the initial weights, kept outside DDP)
    seed_everything(a.seed)
    model = build_model(a.arch, a.weights, n_classes)
    cfg = engine.StepConfig(method=a.method, labels=a.labels, sigma=a.sigma, stability_input=a.stability_input,
                            head_only=(a.method == "stability" and not a.stability_full), device=d.device,
                            amp=a.amp and cuda, channels_last=a.channels_last and cuda, grad_clip=a.grad_clip)
    cfg.criterion = engine.make_criterion(a.method, a.alpha, a.kl_reduction, a.stability_detach_clean)
    teacher = None
    caches = None
    if cfg.needs_teacher():
        teacher = copy.deepcopy(model).eval().requires_grad_(False).to(d.device)
        caches = resolve_caches(train_settings, teacher, a.arch, a.weights, a.teacher_cache,
                                fallback_root=out / "teacher-cache", d=d, batch_size=a.val_batch_size,
                                workers=min(a.workers, 2), device=d.device, amp=cfg.amp, progress=a.progress)
        cfg.teacher = None if caches is not None else teacher
    a.teacher_cached = caches is not None
    model.to(d.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = freeze_all_but_head(model) if cfg.head_only else [p for p in model.parameters()]
    optimizer = torch.optim.Adam(params, lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay)
    scheduler = make_scheduler(optimizer, a)

    start_epoch, best = 0, None
    resume = a.resume
    if resume == "auto":
        resume = str(out / "last.pth") if (out / "last.pth").exists() else None
    if resume:
        ckpt = checkpoint.load(resume)
        if not isinstance(ckpt, dict) or not {"model", "optimizer", "scheduler", "epoch"} <= set(ckpt):
            raise checkpoint.CheckpointError(f"{resume}: not a run checkpoint (no model/optimizer/scheduler/epoch)")
        if ckpt.get("arch") != a.arch:
            raise ValueError(f"{resume}: arch {ckpt.get('arch')} != --arch {a.arch}")
        model.net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best = int(ckpt["epoch"]), ckpt.get("best_metric")
        if d.main:
            log.info("resumed from %s at epoch %d", resume, start_epoch)

    train_model = model
    if d.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if cuda else None, find_unused_parameters=False)

    if d.main:
        atomic_write_text(out / "args.json", json.dumps(_jsonable(a), indent=2, sort_keys=True))
        rows = [r for r in _read_metrics(out) if r.get("epoch", 0) < start_epoch]
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        _write_summary(out, rows)
    else:
        rows = []

    spec = LoaderSpec(batch_size=a.batch_size, workers=a.workers, shuffle_buffer=a.shuffle_buffer,
                      resampled=a.resampled, seed=a.seed)
    need_clean = cfg.needs_clean(caches is not None)
    last_val: dict = {}
    for epoch in range(start_epoch, a.epochs):
        torch.manual_seed(mix_seed(a.seed, epoch, d.rank, 3))  # dropout / noise: depends on epoch only
        loader, n_batches = make_train_loader(train_settings, spec, epoch=epoch, rank=d.rank, world=d.world,
                                              need_comp=cfg.needs_comp(), need_clean=need_clean, caches=caches,
                                              limit=a.train_limit, pin_memory=cuda)
        if a.steps_per_epoch:
            n_batches = min(n_batches, a.steps_per_epoch)
        tr = engine.train_one_epoch(train_model, optimizer, loader, cfg, n_batches, epoch, d, a.progress,
                                    a.log_every, logger=(lambda r: log.info("%s", r)) if d.main else None)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": tr["loss"], "train_ce": tr["ce"],
               "train_kl": tr["kl"], "train_images": tr["images"], "images_per_s": tr["images_per_s"],
               "train_seconds": tr["seconds"]}
        metric = tr["loss"]
        if val_settings:
            vl = make_eval_loader(val_settings, a.val_batch_size, workers=min(a.workers, 2), rank=d.rank,
                                  world=d.world, limit=a.val_limit, pin_memory=cuda)
            last_val = engine.evaluate(model, vl, cfg, d)
            row.update({"val_loss": last_val["loss"], "val_top1": last_val["top1"], "val_top5": last_val["top5"],
                        "val_count": last_val["count"]})
            metric = last_val["loss"] if math.isfinite(last_val["loss"]) else tr["loss"]
        scheduler.step(metric)
        score = row.get("val_top1") if (a.best_metric == "top1" and val_settings) else -metric
        improved = score is not None and math.isfinite(score) and (best is None or score > best)
        if improved:
            best = score
        if d.main:
            rows.append(row)
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            _write_summary(out, rows)
            ckpt = {"model": model.net.state_dict(), "arch": a.arch, "num_classes": n_classes, "epoch": epoch + 1,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "args": _jsonable(a), "best_metric": best, "metrics": row}
            checkpoint.save(ckpt, out / "last.pth")
            if improved:
                checkpoint.save(ckpt, out / "best.pth")
            log.info("epoch %d: %s", epoch, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in row.items()))
        barrier(d)
    if d.main and not (out / "best.pth").exists() and (out / "last.pth").exists():
        import shutil
        shutil.copyfile(out / "last.pth", out / "best.pth")
    result = {"out": str(out), "rows": rows, "best_metric": best, "val": last_val}
    if d.enabled:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    try:
        main()
    except checkpoint.CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)
