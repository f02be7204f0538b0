"""One shard = the unit of work: crop, compress, decode, measure and write N samples.

Sample layout inside a shard (WebDataset: members ``<key>.<field>``):

==============  ==============================================================
``clean.webp``  the clean 224² crop x, lossless WebP (bit-exact)
``comp.<ext>``  the transmitted bitstream of x̃ (``jpg``, ``j2k``/``jp2``, ``bpg``);
                absent in the ``lossless`` setting, where x̃ = x
``cls``         class index as ASCII decimal (-1 = unlabelled)
``json``        key, source path, label, codec, q, bytes, bpp, psnr, ssim, size
==============  ==============================================================

Everything written into a tar depends only on the inputs (fixed member order, mtime 0,
no user names, no timings), so shards are byte-identical whatever the job count or
the order in which shards finish.  Timings go to the shard's record file instead.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .codecs import Codec, create
from .codecs.lossless import encode_lossless
from .crops import load_crop
from .metrics import psnr, ssim
from .sources import Item

log = logging.getLogger("pipeline")

FORMAT_VERSION = 3  # 2: clean crops written with WebP quality 0 (same pixels, new bytes); 3: j2k defaults to the JP2 container


@dataclass
class ShardJob:
    index: int
    items: list[Item]
    out_dir: Path
    codec_name: str
    q: float | None
    options: dict
    plan: str          # hash of everything that determines this shard's bytes

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def record_path(out_dir: Path, index: int) -> Path:
    return out_dir / "records" / f"shard-{index:06d}.json"


class _DeterministicTar:
    """A plain tar whose bytes depend only on the members added."""

    def __init__(self, fileobj):
        self.tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def process_item(item: Item, codec: Codec) -> tuple[dict[str, bytes], dict, dict]:
    """One image -> (tar members, deterministic record, timings).  Raises on bad input."""
    t0 = time.perf_counter()
    x = load_crop(item.path)
    t1 = time.perf_counter()
    bits = codec.encode(x)
    t2 = time.perf_counter()
    y = codec.decode(bits)  # x̃ always comes from the bitstream
    t3 = time.perf_counter()
    if y.shape != x.shape:
        raise ValueError(f"codec {codec.name} decoded a {y.shape} image from a {x.shape} crop")
    h, w = x.shape[:2]
    lossless = codec.name == "lossless"
    clean = bits if lossless else encode_lossless(x)
    record = {
        "key": item.key, "path": item.rel, "label": item.label,
        "codec": codec.name, "q": codec.q, "setting": codec.setting,
        "bytes": len(bits), "bpp": 8.0 * len(bits) / (w * h),
        "psnr": _finite(psnr(x, y)), "ssim": 1.0 if lossless else ssim(x, y),
        "width": w, "height": h,
    }
    t4 = time.perf_counter()
    members = {"clean.webp": clean}
    if not lossless:
        members[f"comp.{codec.ext}"] = bits
    members["cls"] = str(item.label).encode()
    members["json"] = json.dumps(record, sort_keys=True).encode()
    timings = {"load_ms": 1e3 * (t1 - t0), "enc_ms": 1e3 * (t2 - t1), "dec_ms": 1e3 * (t3 - t2),
               "other_ms": 1e3 * (t4 - t3)}
    return members, record, timings


def run_shard(job: ShardJob, on_item=None) -> dict:
    """Write ``shard-NNNNNN.tar`` and its record file; return the record.

    Both are written under temporary names and renamed when complete, record first: a
    shard counts as done only when its tar exists, so a killed run redoes it."""
    t_start = time.perf_counter()
    codec = create(job.codec_name, job.q, **job.options)
    tar_path = job.out_dir / job.name
    tmp_tar = tar_path.with_name(f".{job.name}.tmp{os.getpid()}")
    samples, failed = [], []
    with open(tmp_tar, "wb") as f:
        tar = _DeterministicTar(f)
        for item in job.items:
            try:
                members, record, timings = process_item(item, codec)
            except Exception as exc:  # one bad image never kills the run: record it and go on
                reason = f"{type(exc).__name__}: {exc}".strip()
                log.warning("skipped %s: %s", item.path, reason)
                log.debug("%s", traceback.format_exc())
                failed.append({"path": str(item.path), "rel": item.rel, "reason": reason})
            else:
                for field, data in members.items():
                    tar.add(f"{item.key}.{field}", data)
                samples.append({**record, **timings})
            if on_item:
                on_item()
        tar.close()
    result = {"format": FORMAT_VERSION, "shard": job.name, "plan": job.plan, "count": len(samples),
              "samples": samples, "failed": failed, "seconds": time.perf_counter() - t_start}
    rec = record_path(job.out_dir, job.index)
    rec.parent.mkdir(parents=True, exist_ok=True)
    tmp_rec = rec.with_name(f".{rec.name}.tmp{os.getpid()}")
    tmp_rec.write_text(json.dumps(result))
    os.replace(tmp_rec, rec)
    os.replace(tmp_tar, tar_path)
    return result


def load_record(out_dir: Path, index: int) -> dict | None:
    """The record of a complete shard, or None when the shard must be (re)made."""
    rec = record_path(out_dir, index)
    if not (out_dir / shard_name(index)).exists() or not rec.exists():
        return None
    try:
        return json.loads(rec.read_text())
    except (OSError, json.JSONDecodeError):
        return None
