"""Evaluate checkpoints / plain weights on shard settings -> JSON + CSV table.

    python -m trainer.eval --checkpoint runs/r50-j2k200/best.pth --shards 'shards/val/*/*.tar' --out results.json
    python -m trainer.eval --arch mobilenet_v2 --weights file.pth --shards ...   # plain weights (method "pretrained")

One row per (model, setting): checkpoint, weights, arch, method, trained_on, labels, setting,
codec, q, top1, top5 (percent), count, labelled, mean_bytes, mean_bpp (from the manifest).
Rows of an existing --out file for other (model, setting) pairs are kept (--overwrite to drop them).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from . import engine
from .data import group_settings, make_eval_loader
from .models import load_model
from .utils import Dist, atomic_write_text, init_distributed

log = logging.getLogger("trainer.eval")

COLUMNS = ["checkpoint", "weights", "arch", "method", "trained_on", "labels", "setting", "codec", "q",
           "top1", "top5", "count", "labelled", "loss", "mean_bytes", "mean_bpp", "mean_psnr", "mean_ssim", "epoch"]


def evaluate_model(model, meta: dict, settings, batch_size: int = 64, workers: int = 2, device="cpu",
                   amp: bool = True, limit: int | None = None, d: Dist | None = None,
                   progress: bool = False) -> list[dict]:
    d = d or Dist()
    device = torch.device(device)
    cfg = engine.StepConfig(device=device, amp=amp and device.type == "cuda",
                            channels_last=device.type == "cuda")
    model = model.to(device).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    rows = []
    for s in settings:
        loader = make_eval_loader([s], batch_size, workers=workers, rank=d.rank, world=d.world, limit=limit,
                                  pin_memory=device.type == "cuda")
        present = sorted(set((s.manifest.get("class_index") or {}).values()))
        n_out = s.manifest.get("num_classes") or 0
        r = engine.evaluate(model, loader, cfg, d, progress=progress, desc=s.name,
                            present=present if 1 < len(present) < n_out else None)
        mean = s.manifest.get("mean") or {}
        rows.append({"checkpoint": meta.get("checkpoint"), "weights": meta.get("weights"), "arch": meta.get("arch"),
                     "method": meta.get("method"), "trained_on": meta.get("trained_on"),
                     "labels": meta.get("labels") or "dataset", "setting": s.name, "codec": s.codec, "q": s.q,
                     "split": s.manifest.get("split"), "shards_dir": s.dir,
                     "top1": r["top1"], "top5": r["top5"], "top1_present": r["top1_present"],
                     "count": r["count"], "labelled": r["labelled"],
                     "loss": r["loss"], "mean_bytes": mean.get("bytes"), "mean_bpp": mean.get("bpp"),
                     "mean_psnr": mean.get("psnr"), "mean_ssim": mean.get("ssim"), "epoch": meta.get("epoch")})
        if d.main:
            log.info("%s on %s: top1 %.2f top5 %.2f (%d images, %.1f s)", meta.get("checkpoint") or meta.get("weights"),
                     s.name, r["top1"], r["top5"], r["count"], r["seconds"])
    return rows


def _row_id(r: dict) -> tuple:
    return (r.get("checkpoint"), r.get("weights") if r.get("checkpoint") is None else None, r.get("arch"),
            r.get("setting"), r.get("shards_dir"))


def write_results(path: str | os.PathLike, rows: list[dict], merge: bool = True) -> tuple[Path, Path]:
    """JSON list at ``path`` and the same rows as CSV next to it (same stem, .csv)."""
    path = Path(path)
    if merge and path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = []
        new_ids = {_row_id(r) for r in rows}
        rows = [r for r in old if _row_id(r) not in new_ids] + rows
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]  # NaN -> null
    atomic_write_text(path, json.dumps(rows, indent=1, default=str) + "\n")
    csv_path = path.with_suffix(".csv")
    cols = COLUMNS + [k for r in rows for k in r if k not in COLUMNS]
    cols = list(dict.fromkeys(cols))
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    return path, csv_path


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m trainer.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", nargs="+", default=[], help="run checkpoint(s) (best.pth / last.pth)")
    ap.add_argument("--arch", default=None, help="arch of plain --weights")
    ap.add_argument("--weights", nargs="+", default=[], help="plain weights file(s) or torchvision weights names")
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--shards", nargs="+", required=True, help="globs / brace patterns; grouped by folder = setting")
    ap.add_argument("--out", default="results.json", help="JSON results (CSV written next to it)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out instead of merging rows into it")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="samples per setting (quick checks)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-amp", dest="amp", action="store_false")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not a.checkpoint and not a.weights:
        ap.error("give --checkpoint and/or --arch with --weights")
    if a.weights and not a.arch:
        ap.error("--weights needs --arch")
    if a.threads:
        torch.set_num_threads(a.threads)
    d = init_distributed(a.device)
    settings = group_settings(a.shards)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for c in a.checkpoint:
        model, meta = load_model(c)
        rows += evaluate_model(model, meta, settings, a.batch_size, a.workers, d.device, a.amp, a.limit, d, a.progress)
    for w in a.weights:
        model, meta = load_model(w, arch=a.arch, num_classes=a.num_classes)
        rows += evaluate_model(model, meta, settings, a.batch_size, a.workers, d.device, a.amp, a.limit, d, a.progress)
    if d.main:
        jp, cp = write_results(a.out, rows, merge=not a.overwrite)
        w = max(len(r["setting"]) for r in rows)
        for r in rows:
            print(f"{r['method']:>10} {str(r['trained_on']):>12} {r['setting']:>{w}}  top1 {r['top1']:6.2f}  "
                  f"top5 {r['top5']:6.2f}  n={r['count']}")
        print(f"wrote {jp} and {cp} ({len(rows)} rows, {time.perf_counter() - t0:.1f} s)")
    if d.enabled:
        torch.distributed.destroy_process_group()
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
