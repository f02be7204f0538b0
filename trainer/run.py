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

from .clitools import run_click
from .config import ConfigError, TrainConfig, read_yaml
from .options import click_options


def _config_values(ctx: click.Context, params: dict) -> dict:
    """The options given on the command line (not their defaults): they override --config."""
    return {k: v for k, v in params.items()
            if k != "config" and ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="YAML file of option values (e.g. a run's args.yaml); the command line overrides it.")
@click_options(TrainConfig)
@click.pass_context
def cli(ctx: click.Context, config, **params):
    """Train one model on the shards of a setting (see docs/training.md)."""
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
