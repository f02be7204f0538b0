"""The shard format (defined here, once) and the unit of work that writes it.

Folder layout: ``OUT/<split>/<setting>/`` holds ``shard-000000.tar``, ``shard-000001.tar``, …,
``manifest.json`` + ``manifest.csv`` (:mod:`pipeline.manifest`), ``plan.json`` (what every
shard must hold, so that any machine can check or finish the build) and ``records/``
(one JSON record per shard, from which the manifest is rebuilt).

A shard is a plain tar (GNU format, members in a fixed order, mtime 0, no owner names):
WebDataset reads it as is.  A sample is the members ``<key>.<field>``:

==============  ========  =========  ================================================
field           ``pair``  ``split``  content
==============  ========  =========  ================================================
``clean.webp``  yes       no         the clean 224² crop x, lossless WebP (bit-exact)
``comp.<ext>``  yes       yes        the transmitted bitstream of x̃ (``jpg``, ``j2k``
                                     or ``jp2``, ``bpg``); its length is ``bytes``
``cls``         yes       yes        class index as ASCII decimal (-1 = unlabelled)
``json``        yes       no         key, source path, label, codec, q, bytes, bpp,
                                     psnr, ssim, width, height
==============  ========  =========  ================================================

Layouts (manifest key ``layout``):

- ``pair`` (the default): every sample is self-contained, (x, x̃) together.
- ``split``: a lossy setting's sample holds the bitstream and the label only; x is stored
  once per split in the reference folder ``OUT/<split>/lossless`` (manifest key
  ``reference``: ``{"setting": "lossless", "plan_id": …}``), and the per-sample record
  (path, metrics) is in ``manifest.csv`` and ``records/`` and in the reference's ``json``.
  Two members, because a tar member costs a 512-byte header plus padding to 512 bytes:
  three members would cost about 2.8 KB per sample, more than a j2k-200 bitstream.
  Shard i of the setting pairs with shard i of the reference: same shard names, and the
  setting's keys are the reference's keys of that shard, in the same order (equal, unless
  the codec failed on an image the reference holds).  :func:`pipeline.layout.check_reference`
  checks a pairing.
- The ``lossless`` setting is the same in both layouts: ``clean.webp`` (x, which is also
  x̃), ``cls``, ``json``.  It is every split-layout setting's reference.

Order: samples go to shards in the plan's order (:mod:`pipeline.plan`): by default a
seeded pseudo-random permutation of the sorted listing, the same for every setting of a
split, so shard i of every setting holds the same keys in the same order.

Keys are the source path relative to the split folder with every character outside
``[A-Za-z0-9_-/]`` replaced by ``_`` (``n01440764/n01440764_10026_JPEG``); a file name byte
that is not UTF-8 becomes ``_xNN``.

Everything written into a tar depends only on the inputs, so shards are byte-identical
whatever the job count, the backend, the machine or the order in which shards finish.
Timings go to the shard's record instead.  A shard is committed tar first (written under a
temporary name, renamed when complete), then its record, which names the tar's size and
SHA-256: a shard counts as done only when its record's plan is the current one and its
tar matches the record.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import tarfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_output, atomic_write_json
from .bounded import read_json
from .codecs import Codec, create
from .codecs.lossless import encode_lossless
from .crops import load_crop
from .limits import DEFAULT_BUDGET, DecodeBudget, open_regular_file
from .metrics import psnr, ssim
from .setting import LOSSLESS
from .sources import Item, display, safe_text

log = logging.getLogger("pipeline")

# 3: plan.json, records name their tar's SHA-256, source fingerprints in the plan, layouts;
#    j2k defaults to the JP2 container (the paper's)
FORMAT_VERSION = 3
PAIR, SPLIT = "pair", "split"
LAYOUTS = (PAIR, SPLIT)
CLEAN = "clean.webp"
REFERENCE = LOSSLESS      # the setting that holds x for a split


def sample_fields(codec: str, ext: str, layout: str) -> list[str]:
    """The members of a sample, in the order they are written."""
    if codec == LOSSLESS:
        return [CLEAN, "cls", "json"]
    if layout == SPLIT:
        return [f"comp.{ext}", "cls"]
    return [CLEAN, f"comp.{ext}", "cls", "json"]


@dataclass(frozen=True)
class Target:
    """One setting's output of a run: its codec and where its shards go."""
    setting: str
    codec: str
    q: float | int | None
    options: dict
    out_dir: Path
    layout: str         # PAIR or SPLIT (lossless: PAIR, it is self-contained)


@dataclass
class ShardJob:
    """Shard ``index`` of every target in ``targets``: one source pass, one tar per target."""
    index: int
    items: list[Item]
    targets: list[Target]
    plans: dict[str, str]          # setting -> plan hash of this shard
    #: the decode budget travels with the job: a worker process (joblib, Dask) is handed it
    budget: DecodeBudget = DEFAULT_BUDGET
    stats: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def shard_index(name: str) -> int | None:
    """'shard-000012.tar' (or a temporary name of it) -> 12."""
    base = name.lstrip(".")
    if base.startswith("shard-") and base[12:16] in (".tar", ".jso") and base[6:12].isdigit():
        return int(base[6:12])
    return None


def record_path(out_dir: Path, index: int) -> Path:
    return out_dir / "records" / f"shard-{index:06d}.json"


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]


class _HashingFile:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()


class _DeterministicTar:
    """A plain tar whose bytes depend only on the members added."""

    def __init__(self, fileobj):
        self.file = _HashingFile(fileobj)
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.GNU_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> dict:
        self.tar.close()
        return {"size": self.file.size, "sha256": self.file.sha.hexdigest()}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def crop_id(x) -> str:
    """The content identity of a crop (its pixels): equal for the same photo and crop in any setting or build."""
    return hashlib.sha256(memoryview(x.tobytes())).hexdigest()[:20]


def encode_item(item: Item, x, codec: Codec, target: Target, clean: bytes | None,
                budget: DecodeBudget = DEFAULT_BUDGET) -> tuple[dict[str, bytes], dict, dict]:
    """One crop and one setting -> (tar members, deterministic record, timings).  Raises on bad input."""
    t1 = time.perf_counter()
    bits = codec.encode(x)
    t2 = time.perf_counter()
    y = codec.decode(bits, budget)  # x̃ always comes from the bitstream
    t3 = time.perf_counter()
    if y.shape != x.shape:
        raise ValueError(f"codec {codec.name} decoded a {y.shape} image from a {x.shape} crop")
    h, w = x.shape[:2]
    lossless = codec.name == LOSSLESS
    record = {
        "key": item.key, "path": item.rel, "label": item.label,
        "codec": codec.name, "q": codec.q, "setting": codec.setting,
        "bytes": len(bits), "bpp": 8.0 * len(bits) / (w * h),
        "psnr": _finite(psnr(x, y)), "ssim": 1.0 if lossless else ssim(x, y),
        "width": w, "height": h,
    }
    members: dict[str, bytes] = {}
    for f in sample_fields(codec.name, codec.ext, target.layout):
        if f == CLEAN:
            members[f] = bits if lossless else (clean if clean is not None else encode_lossless(x))
        elif f == "cls":
            members[f] = str(item.label).encode()
        elif f == "json":
            members[f] = json.dumps(record, sort_keys=True).encode()
        else:
            members[f] = bits
    # the crop's content identity, in the record and manifest.csv but not in the sample's json (the tar
    # bytes stay those of earlier builds): trainer.selection compares the images a model was chosen on with
    # those it is scored on by it, whatever shards they were rebuilt into
    record["crop_sha256"] = crop_id(x)
    t4 = time.perf_counter()
    timings = {"enc_ms": 1e3 * (t2 - t1), "dec_ms": 1e3 * (t3 - t2), "other_ms": 1e3 * (t4 - t3)}
    return members, record, timings


def _reason(exc: BaseException) -> str:
    return safe_text(f"{type(exc).__name__}: {exc}".strip())


def run_shard(job: ShardJob, on_item=None) -> dict[str, dict]:
    """Write shard ``job.index`` of every target (tar, then record); return the records by setting.

    Each source image is loaded and cropped once for all targets; the clean crop's lossless
    WebP is made once and shared.  A bad image is recorded in ``failed`` (of every target
    when the source fails, of one target when its codec fails) and the shard goes on; an
    error writing the output stops the shard with nothing committed."""
    return _run_shard(job, on_item)


def _run_shard(job: ShardJob, on_item=None) -> dict[str, dict]:
    t_start = time.perf_counter()
    codecs = {t.setting: create(t.codec, t.q, **t.options) for t in job.targets}
    samples = {t.setting: [] for t in job.targets}
    failed = {t.setting: [] for t in job.targets}
    need_clean = any(t.codec != LOSSLESS and t.layout == PAIR for t in job.targets)
    tars: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        writers = {t.setting: _DeterministicTar(stack.enter_context(atomic_output(t.out_dir / job.name, "wb")))
                   for t in job.targets}
        for item in job.items:
            t0 = time.perf_counter()
            try:
                x = load_crop(item.path, budget=job.budget)
                t1 = time.perf_counter()
                clean = encode_lossless(x) if need_clean else None   # shared by the pair-layout targets
                clean_ms = 1e3 * (time.perf_counter() - t1)
            except Exception as exc:  # one bad image never kills the run: record it and go on
                reason = _reason(exc)
                log.warning("skipped %s: %s", item.rel, reason)
                log.debug("%s", traceback.format_exc())
                for t in job.targets:
                    failed[t.setting].append({"path": display(item.path), "rel": item.rel, "key": item.key,
                                              "reason": reason})
            else:
                load_ms = 1e3 * (t1 - t0)
                for t in job.targets:
                    try:
                        members, record, timings = encode_item(item, x, codecs[t.setting], t, clean, job.budget)
                    except Exception as exc:
                        reason = _reason(exc)
                        log.warning("skipped %s for %s: %s", item.rel, t.setting, reason)
                        failed[t.setting].append({"path": display(item.path), "rel": item.rel, "key": item.key,
                                                  "reason": reason})
                        continue
                    for f, data in members.items():   # a write error is not the image's fault: it stops the shard
                        writers[t.setting].add(f"{item.key}.{f}", data)
                    if t.layout == PAIR and t.codec != LOSSLESS:
                        timings["other_ms"] += clean_ms    # what this setting costs when built on its own
                    samples[t.setting].append({**record, "load_ms": load_ms, **timings})
            if on_item:
                on_item()
        for t in job.targets:
            tars[t.setting] = writers[t.setting].close()
    # every tar is committed (renamed) here; only now may the records say so
    seconds = time.perf_counter() - t_start
    records = {}
    for t in job.targets:
        s = samples[t.setting]
        rec = {"format": FORMAT_VERSION, "shard": job.name, "plan": job.plans[t.setting], "count": len(s),
               "keys": keys_digest([r["key"] for r in s]), "tar": tars[t.setting],
               "samples": s, "failed": failed[t.setting], "seconds": seconds}
        rec["tar"].update(_stat_id(t.out_dir / job.name))
        atomic_write_json(record_path(t.out_dir, job.index), rec, indent=None)
        records[t.setting] = rec
    return records


def _stat_id(path: Path) -> dict:
    """What identifies a file that nobody touched since: a tar whose size, inode and mtime
    still match its record needs no re-hashing on restart."""
    st = path.stat()
    return {"ino": st.st_ino, "mtime_ns": st.st_mtime_ns}


def load_record(out_dir: Path, index: int, plan: str | None = None, verify: bool = False) -> dict | None:
    """The record of a complete shard, or None when the shard must be (re)made: no record,
    another plan, or a tar that is missing or is not the one the record names.

    The tar must have the record's size; when its inode or mtime changed since the record
    was written (a copy, a restore, or an old tar left beside a newer record by a crash),
    its SHA-256 must match too.  ``verify`` hashes every tar whatever its stat says."""
    rec_file = record_path(out_dir, index)
    try:
        rec = read_json(rec_file, "shard record")
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT_VERSION:
        return None
    if plan is not None and rec.get("plan") != plan:
        return None
    tar = rec.get("tar") or {}
    tar_path = out_dir / shard_name(index)
    try:
        st = tar_path.stat()
    except OSError:
        return None
    if st.st_size != tar.get("size"):
        return None
    untouched = st.st_ino == tar.get("ino") and st.st_mtime_ns == tar.get("mtime_ns")
    try:
        if (verify or not untouched) and file_sha256(tar_path) != tar.get("sha256"):
            return None
    except OSError:     # unreadable, or not a regular file: made again
        return None
    return rec


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular_file(path, "shard") as f:     # a FIFO in its place is refused, not waited on
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
