"""The per-setting manifest that users and the trainer read, rebuilt from shard records.

Fixed keys (other tools rely on them): ``codec`` (str), ``q`` (number or null), ``split``,
``count`` (int), ``mean`` and ``median`` (each ``{"bytes", "bpp", "psnr", "ssim"}``),
``shards`` (list of ``{"name", "count"}``), ``classes`` (names), ``failed`` (list of
``{"path", "reason"}``).  PSNR statistics are over images with finite PSNR; images
reconstructed exactly are counted in ``psnr_infinite`` (all of them in ``lossless``,
where psnr is null).
"""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from . import __version__
from .codecs import Codec

METRICS = ("bytes", "bpp", "psnr", "ssim")
TIMINGS = ("load_ms", "enc_ms", "dec_ms", "other_ms")
CSV_FIELDS = ("key", "path", "label", "shard", "bytes", "bpp", "psnr", "ssim") + TIMINGS


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(statistics.median(values))


def build(codec: Codec, split: str, source, records: list[dict], extra: dict | None = None) -> dict:
    samples = [dict(s, shard=r["shard"]) for r in records for s in r["samples"]]
    mean, median = {}, {}
    for m in METRICS:
        mean[m], median[m] = _stats([s[m] for s in samples])
    timing = {t: _stats([s[t] for s in samples])[0] for t in TIMINGS}
    failed = list(source.rejected) + [
        {"path": f["path"], "reason": f["reason"]} for r in records for f in r["failed"]]
    manifest = {
        "codec": codec.name,
        "q": codec.q,
        "setting": codec.setting,
        "split": split,
        "count": len(samples),
        "mean": mean,
        "median": median,
        "psnr_infinite": sum(1 for s in samples if s["psnr"] is None),
        "shards": [{"name": r["shard"], "count": r["count"]} for r in records],
        # the classes present, in folder order; labels index the whole label space
        "classes": [source.class_names[source.index[f]] for f in source.folders],
        "class_folders": source.folders,
        "class_index": source.index,
        "num_classes": source.num_classes,
        "failed": failed,
        "codec_params": codec.params(),
        "bitstream": f"comp.{codec.ext}" if codec.name != "lossless" else None,
        "sample_fields": ["clean.webp"] + ([f"comp.{codec.ext}"] if codec.name != "lossless" else [])
                         + ["cls", "json"],
        "crop": {"resize": 256, "interpolation": "bicubic", "center_crop": 224},
        "ssim_convention": "Gaussian 11x11 sigma 1.5, K=(0.01,0.03), per RGB channel, valid region, mean",
        "timing_ms_mean": timing,
        "source": str(source.root),
        "source_digest": source.digest(),
        "versions": {"pipeline": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "opencv": cv2.__version__, **codec.versions()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        manifest.update(extra)
    return manifest


def write(out_dir: Path, manifest: dict, records: list[dict]) -> Path:
    """manifest.json (summary) and manifest.csv (one row per sample), each written atomically."""
    path = out_dir / "manifest.json"
    tmp = path.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    csv_path = out_dir / "manifest.csv"
    tmp = csv_path.with_name(".manifest.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            for s in r["samples"]:
                w.writerow({**s, "shard": r["shard"]})
    os.replace(tmp, csv_path)
    return path


def read(path: str | Path) -> dict:
    """Read a manifest.json (or the manifest of a shard folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no manifest at {p}; build the shards with `make shards`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON ({exc})") from None


def print_summary(m: dict, file=None) -> None:
    mean = m["mean"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{m['split']}/{m['setting']}: {m['count']} images in {len(m['shards'])} shards, "
          f"{len(m['failed'])} failed | bytes {fmt(mean['bytes'], '.0f')}  bpp {fmt(mean['bpp'], '.3f')}  "
          f"PSNR {fmt(mean['psnr'], '.2f')} dB  SSIM {fmt(mean['ssim'], '.3f')}", file=file or sys.stdout)
