"""Evaluate checkpoints / plain weights on shard settings -> JSON + CSV table.

    python -m trainer.eval --checkpoint runs/r50-j2k200/best.pth --shards 'shards/val/*/*.tar' --out results.json
    python -m trainer.eval --arch mobilenet_v2 --weights file.pth --shards ...   # plain weights (method "pretrained")

One row per (model, setting): checkpoint, weights, arch, method, trained_on, labels, setting,
codec, q, top1, top5 (percent), count, skipped, expected, mean_bytes, mean_bpp (from the
manifest) ... (``trainer.evaluation.COLUMNS``).  Class groups add one row per (model,
setting, group) from the same pass, without separate shard folders:

    python -m trainer.eval --checkpoint best.pth --shards 'shards/val/*/*.tar' \
        --group A=n01440764,n02102040 --group B=n02979186,n03000684    # or --classes groups.txt

Rows of an existing --out file for other
(model, setting) pairs are kept (--overwrite to drop them).  A (model, setting) pair evaluated
before, with the same checkpoint bytes, the same shards and options, is taken from the cache
(``eval-cache/`` beside --out, see ``trainer.eval_cache``) instead of evaluated: --force
recomputes it, --no-cache ignores the cache.  The command fills a
:class:`trainer.config.EvalConfig` and calls :func:`trainer.evaluate`.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import click

from .clitools import run_click
from .config import EvalConfig
from .options import click_options


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(EvalConfig)
def cli(**params):
    """Top-1 / top-5 of models on every setting of the shards."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = EvalConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()})
    from .evaluation import evaluate
    t0 = time.perf_counter()
    rows = evaluate(cfg)
    if rows and os.environ.get("RANK", "0") == "0":
        w = max(len(r["setting"]) for r in rows)
        for r in rows:
            top1 = "—" if r["top1"] is None or r["top1"] != r["top1"] else f"{r['top1']:6.2f}"
            top5 = "—" if r["top5"] is None or r["top5"] != r["top5"] else f"{r['top5']:6.2f}"
            group = f" [{r['group']}]" if r.get("group") else ""
            click.echo(f"{r['method']:>10} {str(r['trained_on']):>12} {r['setting']:>{w}}{group}  top1 {top1}  "
                       f"top5 {top5}  n={r['count']}" + (f"  skipped {r['skipped']}" if r["skipped"] else ""))
    if cfg.out:
        click.echo(f"wrote {cfg.out} ({len(rows)} rows, {time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: returns the exit status."""
    return run_click(cli, argv, "python -m trainer.eval", multi=("--checkpoint", "--weights", "--shards", "--group", "--classes"))


if __name__ == "__main__":
    sys.exit(main())
