"""BN-statistics experts (AdaBN): a model whose batch-norm running statistics are re-estimated
on one setting's compressed training crops, with no gradient step and no label.

    python -m trainer.adapt_bn --base ../shared/weights/mobilenet_v2_imagenet.pth --arch mobilenet_v2 \\
        --shards 'shards/train/jpeg-10/shard-*.tar' --out runs/bn-stats-jpeg-10

Every BatchNorm layer's running mean and variance are reset and re-estimated as the plain
average over the crops (``momentum=None``) with the layers in training mode and the rest of
the model in eval mode; the weights are untouched.  The statistics are computed in float32.

What is saved is small: a *stats-only* checkpoint (``last.pth`` and ``best.pth`` of a run
folder with ``args.json``, so the receiver's zoo and ``m2m-eval`` find it like any run) holds
the BN buffers, the checkpoint's ``trained_on`` (the setting and its rate, like a trained
expert's) and a reference to the base: its path relative to the checkpoint (or a torchvision
weights name) and the SHA-256 of its file, checked when loaded.  :func:`load` rebuilds the
expert from the base; given a ``bases`` cache (the receiver's zoo passes one), every expert
of one base shares that base's weight tensors and owns only its statistics.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
import torch
from torch import nn

from .clitools import UserError, run_click

KIND = "bn-stats"
FORMAT = 1
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class AdaptError(UserError, ValueError):
    """A stats-only checkpoint or an adaptation that cannot be done (one line)."""


def bn_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


@torch.no_grad()
def adapt(model: nn.Module, batches, device: torch.device) -> int:
    """Re-estimate the BN running statistics of ``model`` over ``batches`` of uint8 (N,3,H,W)
    crops (a loader's ``comp``); returns the number of images seen.  No weight changes."""
    from .methods import to_input

    layers = bn_layers(model)
    if not layers:
        raise AdaptError("the model has no batch-norm layer whose statistics could be estimated")
    model.eval()
    saved = {}
    for m in layers.values():
        saved[m] = m.momentum
        m.reset_running_stats()
        m.momentum = None          # a cumulative average over every batch, not an exponential one
        m.train()
    seen = 0
    try:
        for x in batches:
            if x.numel() == 0:
                continue
            model(to_input(x, device))
            seen += int(x.shape[0])
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        model.eval()
    if seen == 0:
        raise AdaptError("no image to estimate the statistics on")
    return seen


def stats_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The BN buffers of ``model`` by their state_dict names."""
    net = getattr(model, "net", model)
    return {f"{n}.{b}": getattr(m, b).detach().cpu().clone() for n, m in bn_layers(net).items()
            for b in BN_BUFFERS if getattr(m, b, None) is not None}


def file_digest(path: str | os.PathLike) -> str:
    from pipeline.shards import file_sha256
    return file_sha256(Path(path))


def checkpoint(stats: dict, base: str, base_digest: str | None, arch: str, num_classes: int,
               trained_on: list[dict], args: dict) -> dict:
    return {"kind": KIND, "format": FORMAT, "arch": arch, "num_classes": num_classes,
            "base": {"path": base, "sha256": base_digest}, "bn_stats": stats, "trained_on": trained_on,
            "bn": "train", "epoch": 0, "args": {**args, "method": KIND, "arch": arch, "trained_on": trained_on}}


def is_stats_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == KIND


def _base_source(path: Path, obj: dict) -> tuple[str, str | None, bool]:
    """(what to load the base from, its expected digest, whether it is a file)."""
    base = obj.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("path"), str) or not base["path"]:
        raise AdaptError(f"{path}: a {KIND} checkpoint without its base (base.path)")
    digest = base.get("sha256")
    if digest is not None and not isinstance(digest, str):
        raise AdaptError(f"{path}: base.sha256 must be a hex digest")
    ref = base["path"]
    if "\0" in ref or os.path.isabs(ref):
        raise AdaptError(f"{path}: base.path must be relative to the checkpoint, got {ref!r}")
    candidate = path.parent / ref
    if digest is None and not candidate.exists():   # a torchvision weights name (IMAGENET1K_V1)
        return ref, None, False
    if not candidate.is_file():
        raise AdaptError(f"{path}: its base {ref} is not a file beside it ({candidate})")
    return str(candidate), digest, True


def load_any(source, arch: str | None = None, num_classes: int | None = None):
    """:func:`trainer.models.load_model`, and stats-only checkpoints (:func:`load`) too."""
    from .models import is_weights_file, load_model
    if is_weights_file(source) and os.path.isfile(source):
        from .checkpoint import load as load_checkpoint
        obj = load_checkpoint(source)
        if is_stats_checkpoint(obj):
            return load(source, obj)
    return load_model(source, arch=arch, num_classes=num_classes)


def load(path: str | os.PathLike, obj: dict | None = None, bases: dict | None = None):
    """(model, meta) of a stats-only checkpoint: the base's weights (shared with every other
    expert of the same base loaded through the same ``bases`` dict) and this file's statistics."""
    from .checkpoint import LAST_EPOCH
    from .checkpoint import load as load_checkpoint
    from .models import build_model, load_model

    path = Path(path)
    obj = load_checkpoint(path) if obj is None else obj
    if not is_stats_checkpoint(obj) or obj.get("format") != FORMAT:
        raise AdaptError(f"{path}: not a {KIND} checkpoint of format {FORMAT}")
    arch, n, stats = obj.get("arch"), obj.get("num_classes"), obj.get("bn_stats")
    if not isinstance(arch, str) or not isinstance(n, int) or not isinstance(stats, dict):
        raise AdaptError(f"{path}: arch, num_classes and bn_stats are required")
    source, digest, is_file = _base_source(path, obj)
    key = (os.path.realpath(source) if is_file else source, arch, n)
    cache = bases if bases is not None else {}
    if key not in cache:
        if is_file and digest is not None and file_digest(source) != digest:
            raise AdaptError(f"{path}: its base {source} has changed since the statistics were estimated "
                             "(SHA-256 differs)")
        base, base_meta = load_model(source, arch=arch, num_classes=n)
        if is_stats_checkpoint(base_meta):
            raise AdaptError(f"{path}: its base is itself a {KIND} checkpoint")
        cache[key] = base.eval()
    base = cache[key]
    model = build_model(arch, None, n)
    share(model, base, stats, str(path))
    args = obj.get("args") if isinstance(obj.get("args"), dict) else {}
    meta = {"checkpoint": str(path), "weights": args.get("weights"), "arch": arch, "num_classes": n,
            "method": KIND, "trained_on": args.get("trained_on"), "labels": "dataset", "epoch": 0, "args": args,
            # one pass over the training crops, no epoch or checkpoint chosen on any images
            "selected_on": LAST_EPOCH, "base": source}
    return model.eval(), meta


def share(model: nn.Module, base: nn.Module, stats: dict, where: str) -> None:
    """Point every parameter and non-BN buffer of ``model`` at ``base``'s tensors (no copy) and
    give its BN layers ``stats`` (its own)."""
    net, base_net = getattr(model, "net", model), getattr(base, "net", base)
    mods = dict(base_net.named_modules())
    layers = bn_layers(net)
    expected = {f"{n}.{b}" for n, m in layers.items() for b in BN_BUFFERS if getattr(m, b, None) is not None}
    if set(stats) != expected:
        missing, extra = sorted(expected - set(stats)), sorted(set(stats) - expected)
        raise AdaptError(f"{where}: its statistics do not fit the base's layers "
                         f"({len(missing)} missing, {len(extra)} unexpected)")
    for name, mod in net.named_modules():
        b = mods.get(name)
        if b is None or type(b) is not type(mod):
            raise AdaptError(f"{where}: the base has no layer {name!r} of its kind")
        for p in list(mod._parameters):
            mod._parameters[p] = b._parameters[p]
        for k in list(mod._buffers):
            if name in layers and k in BN_BUFFERS:
                t = stats[f"{name}.{k}"]
                if not torch.is_tensor(t) or t.shape != b._buffers[k].shape:
                    raise AdaptError(f"{where}: {name}.{k} has another shape than the base's")
                mod._buffers[k] = (t.float() if t.is_floating_point() else t).clone()
            else:
                mod._buffers[k] = b._buffers[k]
    if model is not net:       # the wrapper's own buffers (input normalisation): shared too
        for k in list(model._buffers):
            model._buffers[k] = base._buffers[k]


def run(base: str, arch: str | None, shards: list[str], out: Path, batch_size: int = 64, limit: int | None = None,
        workers: int = 0, device: str = "cpu") -> Path:
    """Estimate the statistics of ``base`` on the compressed crops of ``shards`` (one setting)
    and write the stats-only run folder ``out``; returns its checkpoint."""
    from pipeline.atomic import atomic_write_json

    from . import checkpoint as ck
    from .data import group_shards, make_eval_loader
    from .distributed import resolve_device
    from .models import is_weights_file, load_model
    from .rundir import RunDir

    sets = group_shards(shards)
    if len(sets) != 1:
        raise AdaptError(f"--shards: one setting at a time (got {', '.join(s.name for s in sets)})")
    s = sets[0]
    if s.setting.lossless:
        raise AdaptError(f"{s.folder}: lossless crops: the base's own statistics are those of clean images")
    model, meta = load_model(base, arch=arch)
    dev = torch.device(resolve_device(device))     # "auto" as every command takes it
    model.to(dev)
    loader = make_eval_loader([s], batch_size, workers=workers, limit=limit)
    seen = adapt(model, (b["comp"] for b in loader), dev)
    out.mkdir(parents=True, exist_ok=True)
    if is_weights_file(base):
        rel, digest = os.path.relpath(os.path.realpath(base), os.path.realpath(out)), file_digest(base)
    else:
        rel, digest = base, None
    trained_on = ck.trained_on([s], [1.0])
    args = {"base": rel, "shards": [os.path.relpath(p) if os.path.isabs(p) else p for p in shards],
            "batch_size": batch_size, "limit": limit, "images": seen, "weights": meta.get("weights")}
    run_dir = RunDir(out)
    atomic_write_json(run_dir.args_json, {"method": KIND, "arch": meta["arch"], **args})
    obj = checkpoint(stats_of(model), rel, digest, meta["arch"], int(meta["num_classes"]), trained_on, args)
    ck.save(obj, run_dir.last)
    ck.save(obj, run_dir.best)
    return run_dir.last


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--base", required=True, help="The model whose statistics to re-estimate: a run checkpoint, a "
                                            "weights file (with --arch) or a torchvision weights name (with --arch).")
@click.option("--arch", default=None)
@click.option("--shards", multiple=True, required=True, help="Shard glob of one compressed setting (train split).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder to write.")
@click.option("--batch-size", type=click.IntRange(min=2), default=64)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many crops.")
@click.option("--workers", type=click.IntRange(min=0), default=0)
@click.option("--device", default="auto", help="auto | cpu | cuda (or cuda:N)")
def cli(base, arch, shards, out, batch_size, limit, workers, device):
    """Re-estimate a model's batch-norm statistics on one setting's compressed crops (AdaBN)."""
    path = run(base, arch, list(shards), out, batch_size, limit, workers, device)
    click.echo(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_click(cli, argv, "python -m trainer.adapt_bn")


if __name__ == "__main__":
    sys.exit(main())
