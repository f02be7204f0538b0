"""Train a classifier on compressed shards: expert training, fine-tuning or stability training.

    python -m trainer.run --shards 'shards/train/j2k-200/*.tar' --val-shards 'shards/val/j2k-200/*.tar' \\
        --method expert --arch resnet50 --weights DEFAULT --alpha 1e-2 --lr 1e-5 --epochs 45 --out runs/r50-j2k200
    python -m trainer.run --config runs/r50-j2k200/args.yaml --out runs/r50-j2k200-b   # the same run again
    torchrun --nproc-per-node 8 -m trainer.run ...        # same code, DDP
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m trainer.run ...

The command fills a :class:`trainer.config.TrainConfig` and calls :func:`trainer.train`:
``--config FILE.yaml`` gives values for any option (its keys are the option names), the
command line overrides them.
"""
from __future__ import annotations

import logging
import sys

import click
from click.core import ParameterSource

from .clitools import FiniteFloat, run_click
from .config import ConfigError, TrainConfig, read_yaml
from .losses import REDUCTIONS
from .methods import LABEL_SOURCES, names as method_names

D = TrainConfig()  # the defaults shown in --help


def _config_values(ctx: click.Context, params: dict) -> dict:
    """The options given on the command line (not their defaults): they override --config."""
    return {k: v for k, v in params.items()
            if k != "config" and ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="YAML file of option values (e.g. a run's args.yaml); the command line overrides it.")
# data
@click.option("--shards", multiple=True, help="Training shards: globs / brace patterns / folders (several allowed).")
@click.option("--val-shards", multiple=True, help="Validation shards (default: no validation).")
@click.option("--batch-size", type=int, default=D.batch_size, show_default=True, help="Per-process batch size.")
@click.option("--val-batch-size", type=int, default=None, help="Default: 2 x batch size.")
@click.option("--workers", type=int, default=D.workers,
              help="Loader processes per rank (default: the CPUs available / ranks on the node - 1, 1 to 32).")
@click.option("--shuffle-buffer", type=int, default=D.shuffle_buffer, show_default=True)
@click.option("--resampled", is_flag=True, help="Draw shards with replacement (any shard count works).")
@click.option("--train-limit", type=int, default=None, help="Samples per epoch (quick runs; default: the manifest's).")
@click.option("--val-limit", type=int, default=None, help="Validation samples (default: all).")
@click.option("--steps-per-epoch", type=int, default=None, help="Cap on optimisation steps per epoch.")
@click.option("--max-skip", type=FiniteFloat(0), default=D.max_skip, show_default=True,
              help="Largest fraction of samples an epoch may skip (unreadable, undecodable) before the run fails.")
@click.option("--gpu-decode", is_flag=True,
              help="JPEG settings on CUDA: decode the bitstreams on the GPU (nvJPEG) instead of in the loader workers.")
# model and method
@click.option("--method", type=click.Choice(method_names(trainable=True)), default=D.method, show_default=True)
@click.option("--arch", default=D.arch, show_default=True)
@click.option("--weights", default=None, help="Torchvision weights name (DEFAULT, IMAGENET1K_V1 ...) or a file.")
@click.option("--num-classes", type=int, default=None, help="Default: the manifest's num_classes.")
@click.option("--alpha", type=FiniteFloat(), default=None,
              help="KL weight (expert 1e-2, stability 5e-3; fine-tuning has none).")
@click.option("--kl-reduction", type=click.Choice(REDUCTIONS), default=D.kl_reduction, show_default=True,
              help="KL over the batch: sum (the paper's code) or batchmean.")
@click.option("--labels", type=click.Choice(LABEL_SOURCES), default=D.labels, show_default=True,
              help="CE targets: the dataset's labels, or the teacher's arg-max on the clean crop (label-free).")
@click.option("--teacher-cache", default=D.teacher_cache, show_default=True,
              help="auto (beside the shards; built when missing) | off (live teacher) | PATH (.npy or folder).")
@click.option("--sigma", type=FiniteFloat(), default=None, help="Stability noise std on the 0..1 scale.")
@click.option("--stability-input", type=click.Choice(("clean", "comp")), default=D.stability_input,
              show_default=True, help="Stability input x: the clean crop or the compressed one.")
@click.option("--stability-detach-clean", is_flag=True, help="Stop gradients through f(x) in the stability KL.")
@click.option("--stability-full", is_flag=True, help="Stability: train all layers (default: the head, as the paper).")
# optimisation
@click.option("--epochs", type=int, default=D.epochs, show_default=True)
@click.option("--lr", type=FiniteFloat(), default=None, help="Default: the method's (expert 1e-5; stability per arch).")
@click.option("--betas", type=(float, float), default=D.betas, show_default=True)
@click.option("--weight-decay", type=FiniteFloat(), default=D.weight_decay, show_default=True)
@click.option("--lr-factor", type=FiniteFloat(), default=D.lr_factor, show_default=True,
              help="LR multiplier on plateau (0.2 = /5).")
@click.option("--lr-patience", type=int, default=D.lr_patience, show_default=True,
              help="Decay after this many consecutive epochs without val-loss improvement.")
@click.option("--min-lr", type=FiniteFloat(), default=D.min_lr, show_default=True)
@click.option("--grad-clip", type=FiniteFloat(), default=None)
@click.option("--best-metric", type=click.Choice(("top1", "loss")), default=D.best_metric, show_default=True,
              help="best.pth: highest val top-1 or lowest val loss.")
# run
@click.option("--out", default=None, help="Run folder.")
@click.option("--resume", default=None, help="'auto' (OUT/last.pth when present) or a checkpoint path.")
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--device", default=D.device, show_default=True, help="auto | cpu | cuda")
@click.option("--amp/--no-amp", default=D.amp, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--channels-last/--no-channels-last", default=D.channels_last, show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--progress/--no-progress", default=D.progress, show_default=True)
@click.option("--log-every", type=int, default=D.log_every, show_default=True,
              help="Also log the train loss every N steps.")
@click.option("--tensorboard", is_flag=True, help="Also log the epoch metrics to OUT/tensorboard/ (needs tensorboard).")
@click.pass_context
def cli(ctx: click.Context, config, **params):
    """Train one model on the shards of a setting (see trainer/README.md)."""
    values = read_yaml(config) if config else {}
    given = _config_values(ctx, params)
    for k in ("shards", "val_shards"):
        if k in given:
            given[k] = list(given[k])
    try:
        cfg = TrainConfig.from_dict({**values, **given}, source=config or "command line")
    except TypeError as exc:  # a YAML value of the wrong shape
        raise ConfigError(f"{config}: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .training import train
    train(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: returns the exit status."""
    return run_click(cli, argv, "python -m trainer.run", multi=("--shards", "--val-shards"))


if __name__ == "__main__":
    sys.exit(main())
