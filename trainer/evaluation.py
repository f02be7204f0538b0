"""``evaluate(config) -> rows``: checkpoints and plain weights on every setting, the results
file the reports read (``results.json`` + ``results.csv``), and its command (``m2m-eval``)::

    python -m trainer.evaluation --checkpoint runs/r50-j2k200/best.pth --shards 'shards/val/*/*.tar' --out results.json
    python -m trainer.evaluation --arch mobilenet_v2 --weights file.pth --shards ...   # plain weights ("pretrained")
    python -m trainer.evaluation --checkpoint best.pth --shards 'shards/val/*/*.tar' \\
        --group A=n01440764,n02102040 --group B=n02979186,n03000684    # or --classes groups.txt

Rows of an existing ``--out`` file for other (model, setting) pairs are kept (``--overwrite``
drops them).  A (model, setting) pair evaluated before, with the same checkpoint bytes, the
same shards and options, is taken from the cache (``eval-cache/`` beside ``--out``, see
:mod:`trainer.eval_cache`) instead of evaluated: ``--force`` recomputes it, ``--no-cache``
ignores the cache.  The command fills a :class:`trainer.config.EvalConfig` and calls
:func:`evaluate`.

One row per (model, setting): ``COLUMNS`` below.  ``count`` is the number of samples scored,
``skipped`` the samples of the setting that could not be scored (unreadable tar, undecodable
bitstream, no label ...), ``expected`` the manifest's count; a setting that lost more than
``max_skip`` of its samples gets no row and the evaluation fails, naming it.

With class groups (``EvalConfig.groups``, ``--group A=...``; ``trainer/groups.py``) each
(model, setting) also gets one row per group, scored in the same pass: ``group`` is its name
(None on the row of the whole setting), ``group_classes`` its class indices, ``count`` and
``labelled`` its samples, ``top1``/``top5`` the 1000-way (all outputs) scores on them and
``top1_present`` the top-1 with the arg-max over the group's classes only.  A skipped
sample's class is unknown, so a group row's ``skipped`` is the setting's, and its
``expected`` is None.

``selected_on_scored_data`` says whether the checkpoint was chosen (best epoch) on the images
of that setting folder (``trainer.checkpoint.selected_on_scored``): such a score is optimistic
and the reports refuse it unless asked.  False for plain weights and for a checkpoint
chosen without validation, None for a checkpoint that does not record what chose it.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import click
import torch

from pipeline.atomic import atomic_output, atomic_write
from pipeline.bounded import BoundedReadError, read_json
from pipeline.provenance import portable_path

from . import checkpoint, labelspace, loop
from .checkpoint import selected_on_scored
from .clitools import UserError, run_click
from .config import EvalConfig
from .data import DataLossError, ShardSet, check_classes, check_skips, group_shards, make_eval_loader
from .distributed import Dist, init_distributed
from .eval_cache import EvalCache, Summary, ordered
from .groups import resolve as resolve_groups
from .options import click_options
from .precision import Precision, resolve as resolve_precision

log = logging.getLogger("trainer.eval")

#: the columns that hold local paths: stored relative to the results file (``portable_rows``)
PATH_COLUMNS = ("checkpoint", "weights", "shards_dir")

#: the columns of results.json / results.csv, in order (more may follow)
COLUMNS = ["checkpoint", "weights", "arch", "method", "trained_on", "labels", "setting", "codec", "q", "split",
           "shards_dir", "top1", "top5", "top1_present", "count", "labelled", "skipped", "expected", "loss",
           "mean_bytes", "mean_bpp", "mean_psnr", "mean_ssim", "epoch", "group", "group_classes",
           "selected_on_scored_data", "precision"]


def evaluate_model(model, meta: dict, sets: list[ShardSet], batch_size: int = 64, workers: int = 2,
                   device="cpu", precision: str | Precision = "auto", limit: int | None = None,
                   d: Dist | None = None, progress: bool = False, max_skip: float = 0.01,
                   groups: dict[str, list[str]] | None = None) -> tuple[list[dict], list[str]]:
    """(rows, failures): one row per setting, and one per class group of it (``groups``: name
    -> class names, resolved against each setting's manifest); a setting that lost more than
    ``max_skip`` of its samples gives a failure message instead of rows.  ``precision``: a
    choice (auto | fp32 | bf16) or a resolved :class:`~trainer.precision.Precision`; every row
    records the one used."""
    d = d or Dist()
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    step = loop.Step(device=device, precision=prec)
    model = prec.prepare(model.to(device).eval())
    check_classes(sets, int(meta.get("num_classes") or 1000), f"{meta.get('checkpoint') or meta.get('weights')}")
    for s in sets:
        labelspace.check([s], labelspace.of_model(meta), meta.get("checkpoint") or meta.get("weights"))
    rows, failures = [], []
    for s in sets:
        loader = make_eval_loader([s], batch_size, workers=workers, rank=d.rank, world=d.world, limit=limit,
                                  pin_memory=device.type == "cuda")
        present = sorted(set((s.manifest.get("class_index") or {}).values()))
        n_out = s.manifest.get("num_classes") or 0
        ids = _group_ids(groups, s) if groups else None
        r = loop.evaluate(model, loader, step, d, progress=progress, desc=s.name,
                          present=present if 1 < len(present) < n_out else None, groups=ids)
        skipped, reasons = r["skipped"], list(r["skip_reasons"])
        if limit is None:  # every sample was read: what the manifest lists and nobody saw is lost too
            missing = s.count - r["count"] - skipped
            if missing > 0:
                skipped += missing
                reasons.append(f"{missing} sample(s) missing against the manifest")
        try:
            check_skips(skipped, r["count"], max_skip, f"{s.folder}", reasons)
        except DataLossError as exc:
            failures.append(str(exc))
            continue
        mean = s.manifest.get("mean") or {}
        row = {"checkpoint": meta.get("checkpoint"), "weights": meta.get("weights"), "arch": meta.get("arch"),
               "method": meta.get("method"), "trained_on": meta.get("trained_on"),
               "labels": meta.get("labels") or "dataset", "setting": s.name, "codec": s.codec, "q": s.q,
               "split": s.manifest.split, "shards_dir": s.folder,
               "top1": r["top1"], "top5": r["top5"], "top1_present": r["top1_present"],
               "count": r["count"], "labelled": r["labelled"], "skipped": skipped,
               "expected": s.count if limit is None else None,
               "loss": r["loss"], "mean_bytes": mean.get("bytes"), "mean_bpp": mean.get("bpp"),
               "mean_psnr": mean.get("psnr"), "mean_ssim": mean.get("ssim"), "epoch": meta.get("epoch"),
               "group": None, "group_classes": None,
               "selected_on_scored_data": (False if meta.get("checkpoint") is None
                                           else selected_on_scored(meta.get("selected_on"), s)),
               "precision": prec.name}
        rows.append(row)
        for name, g in (r.get("groups") or {}).items():
            rows.append({**row, **{k: g[k] for k in ("top1", "top5", "top1_present", "loss", "labelled")},
                         "count": g["labelled"], "expected": None, "group": name,
                         "group_classes": ids[name]})
        if d.main:
            log.info("%s on %s: top1 %.2f top5 %.2f (%d images, %d skipped, %.1f s)",
                     meta.get("checkpoint") or meta.get("weights"), s.name, r["top1"], r["top5"], r["count"],
                     skipped, r["seconds"])
    return rows, failures


def _group_ids(groups: dict[str, list[str]], s: ShardSet) -> dict[str, list[int]]:
    n = s.manifest.get("num_classes")
    return resolve_groups(groups, s.manifest.get("class_index"), n if isinstance(n, int) and n > 0 else None,
                          s.folder)


def _row_id(r: dict) -> tuple:
    return (r.get("checkpoint"), r.get("weights") if r.get("checkpoint") is None else None, r.get("arch"),
            r.get("setting"), r.get("shards_dir"), r.get("group"))


def portable_rows(rows: list[dict], results: str | os.PathLike) -> list[dict]:
    """The rows as the results file ``results`` stores them: paths relative to its folder, so
    that the file names no folder of the machine it was written on."""
    base = Path(results).parent
    return [{**r, **{k: portable_path(r[k], base) for k in PATH_COLUMNS if r.get(k) is not None}} for r in rows]


def write_results(path: str | os.PathLike, rows: list[dict], merge: bool = True) -> tuple[Path, Path]:
    """JSON list at ``path`` and the same rows as CSV next to it (same stem, .csv), each
    written atomically, paths relative to ``path``'s folder.  ``merge``: keep the rows already
    there for other (model, setting) pairs."""
    path = Path(path)
    rows = portable_rows(rows, path)
    if merge and path.exists():
        try:
            old = read_json(path, "results file")
        except (OSError, BoundedReadError) as exc:
            raise UserError(f"{path}: cannot merge into it, not a readable results file ({exc}); "
                            "fix it or give --overwrite") from None
        if not isinstance(old, list):
            raise UserError(f"{path}: cannot merge into it, not a list of rows; fix it or give --overwrite")
        new_ids = {_row_id(r) for r in rows}
        rows = [r for r in old if isinstance(r, dict) and _row_id(r) not in new_ids] + rows
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]  # NaN -> null
    atomic_write(path, json.dumps(rows, indent=1, allow_nan=False) + "\n")
    csv_path = path.with_suffix(".csv")
    cols = list(dict.fromkeys(COLUMNS + [k for r in rows for k in r]))
    with atomic_output(csv_path, "w") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path, csv_path


def check_checkpoint_classes(path: str, num_classes: int) -> None:
    """``--num-classes`` sets plain weights' outputs; a run checkpoint records its own, and one
    that disagrees is an error rather than an option silently ignored."""
    ckpt = checkpoint.load(path)
    n = ckpt.get("num_classes", 1000) if isinstance(ckpt, dict) else None
    if n != num_classes:
        raise UserError(f"{path}: a checkpoint of {n} classes, not --num-classes {num_classes} (the option is for "
                          "plain --weights; a checkpoint's class count is its own)")


def evaluate(config: EvalConfig, summary: Summary | None = None) -> list[dict]:
    """Evaluate every checkpoint and plain weights of ``config`` on every setting of its
    shards; write the results file when ``config.out`` is set (rank 0).  Returns the rows.

    (model, setting) pairs evaluated before with the same bytes and options come from the
    cache (``trainer.eval_cache``; ``config.force`` recomputes); ``summary`` (an
    ``eval_cache.Summary``) is filled with what was reused and what was evaluated."""
    c = config.resolved()
    if c.threads:
        torch.set_num_threads(c.threads)
    d = init_distributed(c.device)
    prec = resolve_precision(c.precision, d.device)
    sets = group_shards(c.shards)
    cache = EvalCache.for_config(c, d.device, d.world, summary)
    for s in sets if c.groups else ():  # a class no setting knows is an error before any model runs
        _group_ids(c.groups, s)
    if d.main:
        log.info("%s", prec.describe())
    rows: list[dict] = []
    failures: list[str] = []
    if c.num_classes is not None:
        for ck in c.checkpoints:
            check_checkpoint_classes(ck, c.num_classes)
    models = [(ck, None) for ck in c.checkpoints] + [(w, c.arch) for w in c.weights]
    for source, arch in models:
        n_classes = c.num_classes if arch else None
        mine, todo = cache.split(source, arch, n_classes, sets)     # rows reused, sets left to evaluate
        if todo:
            model, meta = cache.load(source, arch, n_classes)
            r, f = evaluate_model(model, meta, todo, c.batch_size, c.workers, d.device, prec, c.limit, d,
                                  c.progress, c.max_skip, groups=c.groups)
            cache.store(source, arch, n_classes, todo, r)
            mine += r
            failures += f
        rows += ordered(sets, mine)
    if d.main:
        log.info("%s", cache.summary.line())
    if d.main and c.out and rows:
        write_results(c.out, rows, merge=not c.overwrite)
    if d.enabled:
        torch.distributed.destroy_process_group()
    if failures:
        raise DataLossError(f"{len(failures)} evaluation(s) lost too many samples (their rows were not written): "
                            + " | ".join(failures))
    return rows


# -- the command ------------------------------------------------------------------------------------
@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(EvalConfig)
def cli(**params):
    """Top-1 / top-5 of models on every setting of the shards."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = EvalConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()})
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
    return run_click(cli, argv, "python -m trainer.evaluation",
                     multi=("--checkpoint", "--weights", "--shards", "--group", "--classes"))


if __name__ == "__main__":
    sys.exit(main())
