"""The per-setting manifest that users and the trainer read, rebuilt from shard records.

Fixed keys (other tools rely on them): ``codec`` (str), ``q`` (number or null), ``setting``,
``split``, ``count`` (int), ``mean`` and ``median`` (each ``{"bytes", "bpp", "psnr", "ssim"}``),
``shards`` (list of ``{"name", "count", "keys", "bytes", "sha256"}``: ``keys`` is a digest
of the shard's sample keys in order, ``bytes`` and ``sha256`` describe the tar), ``classes``
(names), ``num_classes``, ``label_space`` (the label space's id, :func:`pipeline.classes.label_space_id`;
absent from older manifests), ``failed`` (list of ``{"path", "reason"}``).  PSNR statistics are
over images with finite PSNR; images reconstructed exactly are counted in
``psnr_infinite`` (all of them in ``lossless``, where psnr is null).

The plan's identity (see :mod:`pipeline.plan` and :mod:`pipeline.shards`): ``format``,
``layout`` (``pair`` or ``split``), ``reference`` (null, or ``{"setting": "lossless",
"plan_id"}`` for a split-layout setting), ``order``, ``seed``, ``shard_size``, ``limit``,
``source_digest`` and ``plan_id`` (one hash of split, order, seed, shard size, limit and
source digest: equal for every setting that can be paired).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from . import __version__
from .atomic import atomic_output, atomic_write_json
from .bounded import BoundedReadError, read_json
from .codecs import Codec
from .classes import MAX_CLASSES
from .setting import Setting, SettingError

METRICS = ("bytes", "bpp", "psnr", "ssim")
#: the values a metric's mean can take (inclusive): bytes and bits per pixel are positive (64
#: bpp is uncompressed 16-bit RGBA), PSNR in dB, SSIM in [-1, 1]
METRIC_RANGES = {"bytes": (1e-9, 2.0 ** 40), "bpp": (1e-9, 64.0), "psnr": (0.0, 1000.0), "ssim": (-1.0, 1.0)}
TIMINGS = ("load_ms", "enc_ms", "dec_ms", "other_ms")
CSV_FIELDS = ("key", "path", "label", "shard", "bytes", "bpp", "psnr", "ssim") + TIMINGS + ("crop_sha256",)
#: keys that differ between two builds of the same bytes (when and how fast it ran)
VOLATILE = ("created", "timing_ms_mean")


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(statistics.median(values))


def build(codec: Codec, plan: dict, records: list[dict]) -> dict:
    """The manifest of one setting from its plan document (plan.json) and its shard records."""
    samples = [dict(s, shard=r["shard"]) for r in records for s in r["samples"]]
    mean, median = {}, {}
    for m in METRICS:
        mean[m], median[m] = _stats([s[m] for s in samples])
    timing = {t: _stats([s[t] for s in samples])[0] for t in TIMINGS}
    source = plan["source"]
    failed = list(source["rejected"]) + [
        {"path": f["path"], "reason": f["reason"]} for r in records for f in r["failed"]]
    fields = plan["sample_fields"]
    return {
        "codec": codec.name,
        "q": codec.q,
        "setting": codec.setting,
        "split": plan["split"],
        "count": len(samples),
        "mean": mean,
        "median": median,
        "psnr_infinite": sum(1 for s in samples if s["psnr"] is None),
        "shards": [{"name": r["shard"], "count": r["count"], "keys": r["keys"], "bytes": r["tar"]["size"],
                    "sha256": r["tar"]["sha256"]} for r in records],
        # the classes present, in folder order; labels index the whole label space
        "classes": source["classes"],
        "class_folders": source["folders"],
        "class_index": source["class_index"],
        "num_classes": source["num_classes"],
        # the identity of the whole label space (pipeline.classes.label_space_id)
        "label_space": source.get("label_space"),
        "failed": failed,
        "codec_params": codec.params(),
        "bitstream": next((f for f in fields if f.startswith("comp.")), None),
        "sample_fields": fields,
        "format": plan["format"],
        "layout": plan["layout"],
        "reference": plan["reference"],
        "order": plan["order"],
        "seed": plan["seed"],
        "shard_size": plan["shard_size"],
        "limit": plan["limit"],
        "plan_id": plan["plan_id"],
        "crop": {"resize": 256, "interpolation": "bicubic", "center_crop": 224},
        "ssim_convention": "Gaussian 11x11 sigma 1.5, K=(0.01,0.03), per RGB channel, valid region, mean",
        "timing_ms_mean": timing,
        "source": source["root"],
        "source_digest": plan["source_digest"],
        "versions": {"pipeline": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "opencv": cv2.__version__, **codec.versions()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write(out_dir: Path, manifest: dict, records: list[dict]) -> Path:
    """manifest.json (summary) and manifest.csv (one row per sample), each written atomically
    (csv first: a manifest.json that exists always has its csv)."""
    with atomic_output(out_dir / "manifest.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            for s in r["samples"]:
                w.writerow({**s, "shard": r["shard"]})
    return atomic_write_json(out_dir / "manifest.json", manifest)


class ManifestError(ValueError):
    """A manifest that is missing or malformed (the message names the file)."""


SHARD_NAME = re.compile(r"shard-\d{6}\.tar")


class Manifest(dict):
    """A manifest as read from disk: the JSON object, checked, with typed views of the keys
    other modules rely on.  Everything in it came from a file, so names are validated
    before anyone can turn them into paths (the setting name, the shard names)."""

    folder: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        """``manifest.json``, or the manifest of a shard folder."""
        p = Path(path)
        if p.is_dir():
            p = p / "manifest.json"
        try:
            data = read_json(p, "manifest")
        except FileNotFoundError:
            raise ManifestError(f"no manifest at {p}; build the shards with `make shards`") from None
        except BoundedReadError as exc:
            raise ManifestError(f"{exc} (not a readable manifest)") from None
        return cls.from_dict(data, p.parent, source=str(p))

    @classmethod
    def from_dict(cls, data: dict, folder: str | Path | None = None, source: str = "manifest") -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(data).__name__}")
        m = cls(data)
        m.folder = Path(folder) if folder is not None else None
        try:
            setting = m.setting
            if data.get("codec") not in (None, setting.codec):
                raise ManifestError(f"codec {data.get('codec')!r} does not match setting {setting.name!r}")
            count = data.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ManifestError(f"count {count!r} is not a whole number >= 0")
            shards = data.get("shards", [])
            if not isinstance(shards, list):
                raise ManifestError("shards is not a list")
            for e in shards:
                if not (isinstance(e, dict) and isinstance(e.get("name"), str) and SHARD_NAME.fullmatch(e["name"])
                        and isinstance(e.get("count"), int) and e["count"] >= 0):
                    raise ManifestError(f"bad shard entry {e!r} (expected name shard-NNNNNN.tar and a count)")
            n = data.get("num_classes")
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_CLASSES):
                raise ManifestError(f"num_classes {n!r} is not a whole number from 0 to {MAX_CLASSES:,}")
            index = data.get("class_index")
            if index is not None and not (isinstance(index, dict) and all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (n or MAX_CLASSES)
                    for v in index.values())):
                raise ManifestError("class_index is not a mapping of class folders to indices below num_classes")
            space = data.get("label_space")
            if space is not None and not (isinstance(space, str) and len(space) <= 64):
                raise ManifestError(f"label_space {str(space)[:40]!r} is not a label-space id")
        except SettingError as exc:
            raise ManifestError(f"{source}: {exc}") from None
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from None
        return m

    @property
    def setting(self) -> Setting:
        name = self.get("setting")
        if name is None:  # manifests written before the name was stored
            return Setting(self.get("codec"), self.get("q"))
        return Setting.parse(name)

    @property
    def name(self) -> str:
        return self.setting.name

    @property
    def codec(self) -> str:
        return self.setting.codec

    @property
    def q(self):
        return self.setting.q

    @property
    def split(self) -> str | None:
        return self.get("split")

    @property
    def shard_counts(self) -> dict[str, int]:
        return {e["name"]: e["count"] for e in self.get("shards", [])}

    @property
    def count(self) -> int:
        return int(self["count"])

    @property
    def num_classes(self) -> int | None:
        """The size of the label space (None: not recorded)."""
        n = self.get("num_classes")
        return n if isinstance(n, int) and n > 0 else None

    @property
    def max_label(self) -> int | None:
        """The largest class index the labels use (None: unknown)."""
        index = self.get("class_index")
        if isinstance(index, dict) and index:
            values = [v for v in index.values() if isinstance(v, int)]
            return max(values) if values else None
        return None

    def mean(self, metric: str) -> float | None:
        """The mean of one of ``METRICS`` over the setting's images (None: unknown or not
        finite); a value no image can have (a negative size, 10**400) is a ManifestError."""
        value = (self.get("mean") or {}).get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        lo, hi = METRIC_RANGES[metric]
        try:
            ok = lo <= float(value) <= hi
        except OverflowError:
            ok = False
        if not ok:
            shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:21] + "..."
            raise ManifestError(f"manifest of {self.get('setting')!r}: mean {metric} {shown} is outside "
                                f"[{lo:g}, {hi:g}]; not a manifest the pipeline wrote")
        return float(value)


def digest(manifest: dict) -> str:
    """SHA-256 of a manifest's content, without what differs between two builds of the same bytes."""
    stable = {k: v for k, v in manifest.items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


def read(path: str | Path) -> Manifest:
    """Read a manifest.json (or the manifest of a shard folder)."""
    return Manifest.load(path)


def print_summary(m: dict, file=None) -> None:
    mean = m.get("mean") or {}
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{m.get('split')}/{m.get('setting')}: {m.get('count')} images in {len(m.get('shards') or [])} shards, "
          f"{len(m.get('failed') or [])} failed | bytes {fmt(mean.get('bytes'), '.0f')}  bpp {fmt(mean.get('bpp'), '.3f')}  "
          f"PSNR {fmt(mean.get('psnr'), '.2f')} dB  SSIM {fmt(mean.get('ssim'), '.3f')}", file=file or sys.stdout)
