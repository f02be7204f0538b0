"""Streaming input over the pipeline's webdataset shards.

The loader is an explicit list of stages (open_clip style).  Training::

    epoch plan (which shards each rank and worker reads, how many batches it makes)
    -> this worker's shards [or shards drawn with replacement: --resampled]
    -> tar samples (trainer.tarstream; counted against the manifest; split layout: the
       reference's clean crop joined by key, only when the method needs it)
    -> shuffle buffer (the worker's quota of samples first, on its own)
    -> decode into the batch (comp.* with the pipeline's decoders, clean.* only when needed,
       cached teacher logits; straight into a channels_last uint8 buffer)
    -> the worker's quota of batches -> skip records attached to the batches

Evaluation: shard list -> split by rank -> split by worker -> tar samples -> decode into
the batch (the last one partial) -> skip records.

Every stage is seeded from (seed, epoch, rank, worker), so an epoch's order depends on
nothing else: a resumed run sees the same data as an uninterrupted one.  Every rank runs
exactly ``count // (world x batch)`` full batches (no DDP hang); :func:`epoch_plan` says
which samples an epoch covers (all of them, each once, when the shard counts allow).
Training needs at least ``world`` shards (``resampled=True`` draws shards with
replacement instead).

Split layout (:mod:`pipeline.shards`): a setting's samples hold the bitstream and the label;
the clean crop lives in the split's ``lossless`` folder, its reference.  Shard i of the
setting is read together with shard i of the reference only when the method needs the
clean crop (a live teacher); a cached teacher, fine-tuning and evaluation never open the
reference's tars, and stability training (the clean crop only) reads the reference alone.

Nothing is lost silently.  A truncated or unreadable tar, a shard with fewer samples than
its manifest lists, a sample without ``.cls`` or with an undecodable bitstream, a sample
whose clean crop its reference lacks is skipped and recorded; images a split-layout
setting lacks because its codec failed on them are not: they are in its manifest's
``failed``, not in its count.  Each batch carries the records of what was skipped since the
previous one (``batch["skips"]``: ``(count, reason)`` pairs; a batch with no samples may
carry the last records).  The loop adds them up and :func:`check_skips` fails a run that
loses more than ``max_skip`` of its data.
"""
from __future__ import annotations

import glob
import io
import logging
import math
import multiprocessing
import os
import random
import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.manifest import Manifest
from pipeline.setting import Setting

from . import tarstream
from .clitools import UserError
from .distributed import mix_seed
from .completeness import check_counts, decode_sized, missing_listed, picture_size
from .losses import UNLABELLED, LabelError

log = logging.getLogger(__name__)


class ShardError(UserError, FileNotFoundError):
    """A shard pattern that matches nothing (the message names it)."""


class LoaderError(UserError, ValueError):
    """Shards that cannot feed the run as configured (too few for the ranks ...)."""


class DataLossError(UserError, RuntimeError):
    """More samples were skipped than ``max_skip`` allows (the message says which and why)."""


# -- the shards of a setting --------------------------------------------------------------------
@dataclass
class ShardSet:
    """The selected shards of one setting folder and the folder's manifest.

    The setting itself (name, codec, q) is the manifest's :class:`pipeline.setting.Setting`;
    ``count`` is the number of samples the manifest lists for the selected shards.  A
    split-layout setting (its samples hold no clean crop) has its ``reference``: the
    ShardSet of the shards of the same names in the split's ``lossless`` folder, checked by
    :func:`pipeline.layout.check_reference` (the loaders join it by key when the clean crop
    is needed)."""
    folder: str
    shards: list[str]
    manifest: Manifest
    count: int
    reference: "ShardSet | None" = None
    missing: list[str] = field(default_factory=list)   # listed and selected, not on disk (read as lost)

    @property
    def setting(self) -> Setting:
        return self.manifest.setting

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def codec(self) -> str:
        return self.manifest.codec

    @property
    def q(self):
        return self.manifest.q

    @property
    def lossless(self) -> bool:
        return self.setting.lossless

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("num_classes") or 1000)

    @property
    def max_label(self) -> int | None:
        """The largest class index the manifest says its labels use (None: unknown)."""
        index = self.manifest.get("class_index")
        if isinstance(index, dict) and index:
            values = [v for v in index.values() if isinstance(v, int)]
            return max(values) if values else None
        return None

    def expected(self) -> dict[str, int]:
        """Shard path -> sample count, for the selected shards the manifest lists."""
        counts = self.manifest.shard_counts
        return {s: counts[os.path.basename(s)] for s in self.shards + self.missing if os.path.basename(s) in counts}


def expand_shards(patterns: str | list[str]) -> list[str]:
    """Globs / brace patterns (``shard-{000000..000009}.tar``) / files / folders -> sorted
    unique .tar paths (a folder means its *.tar).  Raises ShardError when nothing matches."""
    if isinstance(patterns, str):
        patterns = [patterns]
    found: list[str] = []
    for pat in patterns:
        for p in braceexpand(str(pat)):
            if os.path.isdir(p):
                found.extend(glob.glob(os.path.join(p, "*.tar")))
            elif any(c in p for c in "*?["):
                found.extend(glob.glob(p))
            elif os.path.exists(p):
                found.append(p)
            else:
                raise ShardError(f"shard {p} does not exist")
    found = sorted(set(os.path.abspath(f) for f in found if f.endswith(".tar") and os.path.isfile(f)))
    if not found:
        raise ShardError(f"no .tar shards match {' '.join(map(str, patterns))}")
    return found


def _count(m: Manifest, shards: list[str]) -> int:
    counts = m.shard_counts
    names = [os.path.basename(s) for s in shards]
    return sum(counts[n] for n in names) if counts and all(n in counts for n in names) else int(m["count"])


def group_shards(patterns: str | list[str]) -> list[ShardSet]:
    """Expand shard patterns and group the shards by folder (one folder = one setting);
    read and check each folder's manifest.json, and pair a split-layout setting with its
    reference (:func:`pipeline.layout.check_reference`: a missing or mismatched reference is
    a one-line :class:`pipeline.layout.PairingError` naming both folders)."""
    from pipeline.layout import check_reference

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    by_dir: dict[str, list[str]] = {}
    for s in expand_shards(patterns):
        by_dir.setdefault(os.path.dirname(s), []).append(s)
    out = []
    for d, shards in sorted(by_dir.items()):
        m = Manifest.load(d)
        pairing = check_reference(d)
        reference = None
        if pairing is not None:
            ref_dir = folder_key(pairing.reference)
            ref_shards = [os.path.join(ref_dir, os.path.basename(s)) for s in shards]
            ref_m = Manifest.load(ref_dir)
            reference = ShardSet(ref_dir, ref_shards, ref_m, _count(ref_m, ref_shards))
        check_counts(d, m.shard_counts, shards)
        missing = missing_listed(patterns, d, list(m.shard_counts), shards)
        out.append(ShardSet(d, shards, m, _count(m, shards + missing), reference, missing))
    return out


def check_classes(sets: list[ShardSet], n_outputs: int, what: str = "the model") -> None:
    """Refuse labels the model has no output for; warn when the class counts differ."""
    for s in sets:
        top = s.max_label
        if top is not None and top >= n_outputs:
            raise LabelError(f"{s.folder}: labels go up to {top} but {what} has {n_outputs} outputs "
                             "(--num-classes)")
        n = s.manifest.get("num_classes")
        if isinstance(n, int) and n > 0 and n != n_outputs:
            log.warning("%s: the shards have %d classes, %s %d outputs: scores are over all %d outputs "
                        "(top1_present restricts the arg-max to the classes present)", s.name, n, what,
                        n_outputs, n_outputs)


def describe(sets: list[ShardSet]) -> str:
    return ", ".join(f"{s.name} ({s.count} samples, {len(s.shards)} shards)" for s in sets)


# -- skip records -------------------------------------------------------------------------------
class SkipLog:
    """What this process's copy of the pipeline skipped, waiting to ride on the next batch."""

    def __init__(self):
        self.pending: list[tuple[int, str]] = []

    def add(self, count: int, reason: str) -> None:
        log.warning("skipped %d sample(s): %s", count, reason)
        self.pending.append((int(count), reason))

    def drain(self) -> list[tuple[int, str]]:
        out, self.pending = self.pending, []
        return out


def check_skips(skipped: int, seen: int, max_skip: float, what: str, reasons: list[str] = ()) -> None:
    """Raise DataLossError when ``skipped / (seen + skipped)`` is above ``max_skip``."""
    total = seen + skipped
    if skipped and total and skipped / total > max_skip:
        why = "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
        raise DataLossError(f"{what}: {skipped} of {total} samples skipped ({100 * skipped / total:.1f}% > "
                            f"--max-skip {100 * max_skip:g}%): {why}")


# -- stages -------------------------------------------------------------------------------------
def _worker() -> tuple[int, int]:
    wi = get_worker_info()
    return (wi.id, wi.num_workers) if wi is not None else (0, 1)


class ShardList(IterableDataset):
    """Stage 0: the shard list, as dict(url=..., ref=...) (``ref``: the reference tar whose
    clean crops are joined to the samples, split layout only)."""

    def __init__(self, items: list[dict]):
        self.items = [dict(i) for i in items]

    def __iter__(self):
        for item in self.items:
            yield dict(item)


def resampled_shards(seed: int, rank: int):
    """Infinite stream of shards drawn with replacement (per rank and worker seed)."""
    def stage(src):
        items = list(src)
        w, _ = _worker()
        rng = random.Random(mix_seed(seed, rank, w))
        while True:
            yield rng.choice(items)
    return stage


def split_by_node(rank: int, world: int):
    """webdataset's split_by_node reads the rank from torch.distributed; this one takes it
    explicitly, so a rank's share can be computed (and tested) without a process group."""
    def stage(src):
        yield from islice(src, rank, None, world) if world > 1 else src
    return stage


def split_by_worker(src):
    """This loader worker's shards (every n-th)."""
    w, n = _worker()
    yield from islice(src, w, None, n) if n > 1 else src


@dataclass(frozen=True)
class WorkerShare:
    """What one loader worker of one rank reads in an epoch."""
    shards: list[dict]      # its shard items, in reading order
    samples: int            # what they hold (the manifests' counts)
    batches: int            # its quota of the rank's batches


def _apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders; ties to the lower index)."""
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    whole = sum(weights)
    out = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def epoch_plan(items: list[dict], expected: dict[str, int], n_batches: int, *, seed: int, rank: int = 0,
               world: int = 1, workers: int = 1) -> list[WorkerShare]:
    """Which shards each worker of ``rank`` reads this epoch, and how many batches it makes.

    The shard list is permuted with a seed all ranks share, dealt to the ranks round-robin,
    then to the rank's workers.  The rank's ``n_batches`` are shared among its workers in
    proportion to the samples their shards hold, so that a worker whose shards hold a whole
    number of batches reads each of its samples exactly once: when every rank's shards hold
    exactly ``n_batches`` batches and every worker's a whole number of batches, the ranks
    together cover the epoch exactly, each sample once.  Otherwise a worker reads a part of
    its shards (the rest waits for another epoch, which deals the shards anew) or starts them
    again to fill its quota: per rank, at most the rank's surplus or shortfall against
    ``n_batches`` batches plus one batch per worker."""
    order = list(items)
    random.Random(seed).shuffle(order)
    mine = order[rank::world] if world > 1 else order
    n = max(1, workers)
    shares = [mine[w::n] for w in range(n)]
    known = [expected[i["url"]] for i in items if i["url"] in expected]
    mean = round(sum(known) / len(known)) if known else 1
    samples = [sum(expected.get(i["url"], mean) for i in sh) for sh in shares]
    quotas = _apportion(n_batches, [s if sh else 0 for s, sh in zip(samples, shares)])
    return [WorkerShare(sh, s, q) for sh, s, q in zip(shares, samples, quotas)]


class PlannedShards(IterableDataset):
    """Stage 0 of a training epoch: this worker's shards of the plan, one pass as planned,
    then (only if its quota needs more: skipped samples, a shortfall) further passes, each
    reshuffled with a (seed, rank, worker) generator."""

    def __init__(self, plan: list[WorkerShare], seed: int, rank: int):
        self.plan, self.seed, self.rank = plan, seed, rank

    def __iter__(self):
        w, _ = _worker()
        items = [dict(i) for i in self.plan[w].shards]
        if not items or not self.plan[w].batches:
            return
        rng = random.Random(mix_seed(self.seed, self.rank, w, 7))
        while True:
            yield from (dict(i) for i in items)
            rng.shuffle(items)


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _joined(samples, ref_url: str, skips: "SkipLog"):
    """Join the reference's clean crop to each sample of a split-layout shard, by key.

    Within a shard the setting's keys are the reference's keys in the same order, minus the
    images the codec failed on (they are in the setting's ``failed``, not in its count): walk
    the reference forward until the key matches.  A sample whose key the rest of the
    reference does not hold, or whose reference is unreadable, is skipped and counted."""
    ref = tarstream.tar_samples(ref_url, fields=("cls", "clean"))
    ref_error = None
    name = os.path.basename(ref_url)
    for s in samples:
        key = s["__key__"]
        if ref_error is None:
            try:
                r = next(ref, None)
                while r is not None and r["__key__"] != key:
                    r = next(ref, None)      # an image the setting lacks (its codec failed on it)
            except Exception as exc:         # truncated / corrupt reference tar
                r, ref_error = None, f"the reference's {name} is unreadable ({_first_line(exc)})"
            if r is None and ref_error is None:
                ref_error = f"not in the reference's {name} (or out of order: python -m pipeline check --deep)"
            if r is not None:
                for k, v in r.items():
                    if k.startswith("clean."):
                        s[k] = v
                if r.get("cls") is not None and s.get("cls") is not None and r["cls"] != s["cls"]:
                    skips.add(1, f"{os.path.basename(s['__url__'])}:{key}: label {s['cls']!r} but the "
                                 f"reference's is {r['cls']!r}")
                    continue
                yield s
                continue
        skips.add(1, f"{os.path.basename(s['__url__'])}:{key}: no clean crop: {ref_error}")


def tar_samples(expected: dict[str, int], skips: "SkipLog"):
    """The samples of each shard (:mod:`trainer.tarstream`), one shard at a time, so that what a
    shard loses is counted: a shard that cannot be opened or read to the end, or holds fewer
    samples than its manifest lists, records the missing samples in ``skips``.  A shard item
    with ``ref`` (split layout, clean crop needed) gets the reference's clean crops joined
    (:func:`_joined`, which counts the samples it cannot join)."""
    def stage(src):
        seen: set[str] = set()
        empty_in_a_row = 0
        for shard in src:
            url = shard["url"]
            if empty_in_a_row > len(seen):   # cycling over shards that are all unreadable
                return
            seen.add(url)
            empty_in_a_row += 1
            want = expected.get(url)
            read = [0]

            def counted(samples):
                for sample in samples:
                    read[0] += 1
                    yield sample
            try:
                samples = counted(tarstream.tar_samples(url, fields=shard.get("fields")))
                if shard.get("ref"):
                    samples = _joined(samples, shard["ref"], skips)
                for sample in samples:
                    empty_in_a_row = 0
                    if want is not None and read[0] > want:
                        continue      # beyond the manifest's count: counted below, never used
                    yield sample
            except Exception as exc:  # truncated / corrupt tar: the rest of the shard is lost
                lost = max(1, want - read[0]) if want is not None else 1
                skips.add(lost, f"{os.path.basename(url)}: unreadable after {read[0]} sample(s) ({_first_line(exc)})")
                continue
            if want is not None and read[0] < want:
                skips.add(want - read[0], f"{os.path.basename(url)}: {read[0]} samples, the manifest lists {want}")
            elif want is not None and read[0] > want:
                skips.add(read[0] - want, f"{os.path.basename(url)}: {read[0]} samples, the manifest lists {want}: "
                                          "not the shard the manifest describes; the samples beyond it were not used")
    return stage


def shuffle_buffer(bufsize: int, seed: int, rank: int, plan: list[WorkerShare] | None = None,
                   batch_size: int = 1):
    """webdataset's shuffle with a (seed, rank, worker) generator made in the worker.  With a
    ``plan``, the worker's quota of samples (its batches x ``batch_size``) is shuffled on its
    own first, so that the samples of a later pass never take the place of one not yet seen;
    what follows (only read to replace skipped samples) is shuffled after it."""
    def stage(src):
        if bufsize <= 1:
            yield from src
            return
        w, _ = _worker()
        rng = random.Random(mix_seed(seed, rank, w, 11))
        if plan is not None:
            src = iter(src)
            yield from wds.shuffle(bufsize, initial=bufsize, rng=rng)(islice(src, plan[w].batches * batch_size))
        yield from wds.shuffle(bufsize, initial=bufsize, rng=rng)(src)
    return stage


class SampleError(ValueError):
    """A sample that cannot be used (no label, undecodable bitstream ...)."""


_LABEL = re.compile(rb"\s*-?[0-9]{1,9}\s*")


def _label(value) -> int:
    """A ``.cls`` member: ASCII digits of a class index, or -1 (unlabelled); anything else
    (-7, 10^5000 digits, Unicode digits) is the sample's counted skip."""
    raw = value if isinstance(value, (bytes, bytearray)) else str(value).encode("utf-8", "replace")
    if not _LABEL.fullmatch(raw):
        raise SampleError(f"label {bytes(raw[:24])!r} is not a class index")
    label = int(raw)
    if label < UNLABELLED:
        raise SampleError(f"label {label} is not a class index (nor {UNLABELLED}, unlabelled)")
    return label


def _decode(data: bytes, what: str, picture: tuple[int, int] | None = None) -> np.ndarray:
    """A bitstream -> H x W x 3 uint8 (the pipeline's decoders: the pixels the manifests measured);
    ``picture``: the (width, height) it must have, checked from its header before decoding."""
    from pipeline.codecs import decode_any
    try:
        a = decode_any(data) if picture is None else decode_sized(decode_any, data, picture)
    except MemoryError:
        raise SampleError(f"{what}: out of memory while decoding") from None
    except Exception as exc:
        raise SampleError(f"{what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        return np.broadcast_to(a, a.shape[:2] + (3,))
    return a if a.shape[2] == 3 else a[:, :, :3]


def _jpeg_size(data: bytes, what: str) -> tuple[int, int]:
    """(width, height) of a JPEG from its header, checked against the pixel budget (no decoding)."""
    from PIL import Image

    from pipeline.limits import PixelBudgetError, check_pixels
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            check_pixels(*img.size, f"{what} picture")
            if img.mode not in ("RGB", "L"):
                raise SampleError(f"{what}: a {img.mode} JPEG (the GPU decoder takes RGB or grey)")
            return img.size
    except (SampleError, PixelBudgetError) as exc:
        raise SampleError(str(exc)) from None
    except Exception as exc:
        raise SampleError(f"{what}: not a readable JPEG ({type(exc).__name__})") from None


_POPULATE = [True]   # madvise(MADV_POPULATE_WRITE) works here (Linux >= 5.14)


def _populate(t: torch.Tensor) -> None:
    """Map a fresh shared-memory buffer's pages in one system call instead of one page fault
    per 4 KiB as the decoder writes into it (about a quarter of that cost)."""
    if not _POPULATE[0]:
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
        start = t.data_ptr() - t.data_ptr() % page
        length = t.data_ptr() + t.untyped_storage().nbytes() - start
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), 23) != 0:   # MADV_POPULATE_WRITE
            _POPULATE[0] = False
    except (OSError, AttributeError, ValueError):
        _POPULATE[0] = False


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a loader worker, in shared memory, so that handing the batch
    to the main process copies nothing (what torch's default_collate does)."""
    if get_worker_info() is not None:
        try:
            n = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            storage = torch.UntypedStorage._new_shared(n)
            stride = [1] * len(shape)
            for i in range(len(shape) - 2, -1, -1):
                stride[i] = stride[i + 1] * shape[i + 1]
            t = torch.empty(0, dtype=dtype).set_(storage, 0, shape, stride)
            if n >= 1 << 20:
                _populate(t)
            return t
        except (AttributeError, RuntimeError, TypeError):  # a torch without that (private) API
            pass
    return torch.empty(shape, dtype=dtype)


class _Ring:
    """A loader worker's shared-memory batch buffers, used again once the main process says it
    has copied the batch out (``acked[worker]``, see :class:`_CopyOut`).  A fresh buffer per
    batch (what torch's collate does) costs a page fault per 4 KiB the decoder writes, about
    a fifth of decoding a JPEG-10 crop; a buffer used again costs none.  Buffers still in the
    main process's hands are never touched: a new one is made instead."""

    def __init__(self, acked: torch.Tensor, worker: int):
        self.acked, self.worker = acked, worker
        self.seq = 0
        self.busy: list[tuple[int, list]] = []           # (batch number, [(key, tensor)]) sent, not acked
        self.free: dict[tuple, list[torch.Tensor]] = {}
        self.pending: list = []

    def begin(self) -> None:
        done = int(self.acked[self.worker])
        keep = []
        for seq, bufs in self.busy:
            if seq <= done:
                for key, t in bufs:
                    self.free.setdefault(key, []).append(t)
            else:
                keep.append((seq, bufs))
        self.busy, self.pending = keep, []

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (shape, dtype)
        pool = self.free.get(key)
        t = pool.pop() if pool else _empty(shape, dtype)
        self.pending.append((key, t))
        return t

    def sent(self) -> tuple[int, int]:
        """(worker, batch number) of the batch just finished, for the main process's ack."""
        self.seq += 1
        self.busy.append((self.seq, self.pending))
        self.pending = []
        return self.worker, self.seq


class _Batch:
    """One batch being filled, sample by sample: each picture is decoded straight into its row
    of a preallocated uint8 N x H x W x 3 buffer (shared memory in a worker, used again: see
    :class:`_Ring`).  The batch hands out N x 3 x H x W views of it (torch's channels_last
    layout): no transposition, no stacking, no copy on the way to the main process."""

    def __init__(self, size: int, need_comp: bool, need_clean: bool, caches: dict | None, gpu_jpeg: bool,
                 ring: _Ring | None = None, picture: tuple[int, int] | None = None):
        self.size, self.need_comp, self.need_clean, self.caches = size, need_comp, need_clean, caches
        self.picture = picture        # (width, height) of every picture: one sample never sizes the batch
        self.gpu_jpeg = gpu_jpeg
        self.ring = ring
        if ring is not None:
            ring.begin()
        self.empty = ring.empty if ring is not None else _empty
        self.keys: list[str] = []
        self.labels: list[int] = []
        self.pixels: dict[str, torch.Tensor] = {}     # comp / clean -> N x H x W x 3
        self.arrays: dict[str, np.ndarray] = {}
        self.teacher: torch.Tensor | None = None
        self.jpeg: list[bytes] = []
        self.jpeg_size: tuple[int, int] | None = None

    @property
    def n(self) -> int:
        return len(self.keys)

    def _put(self, name: str, a: np.ndarray, what: str) -> None:
        buf = self.arrays.get(name)
        if buf is None:
            t = self.empty((self.size,) + a.shape, torch.uint8)
            self.pixels[name], self.arrays[name] = t, buf = t, t.numpy()
        elif buf.shape[1:] != a.shape:
            raise SampleError(f"{what}: a {a.shape[1]}x{a.shape[0]} picture in a batch of "
                              f"{buf.shape[2]}x{buf.shape[1]} pictures")
        buf[self.n] = a

    def add(self, sample: dict) -> None:
        """Decode ``sample`` into the next row; raises SampleError (the row stays free)."""
        key = sample["__key__"]
        if "cls" not in sample:
            raise SampleError("no .cls member")
        label = _label(sample["cls"])
        clean_k = comp_k = None
        for k in sample:
            if k.startswith("clean."):
                clean_k = k
            elif k.startswith("comp."):
                comp_k = k
        comp_from_clean = self.need_comp and comp_k is None    # lossless: x~ = x
        clean = None
        if self.need_clean or comp_from_clean:
            if clean_k is None:
                raise SampleError("no clean.* member")
            clean = _decode(sample[clean_k], clean_k, self.picture)
        jpeg = None
        if comp_from_clean:
            if self.gpu_jpeg:
                raise SampleError(f"{clean_k}: not a JPEG, but the batch is decoded on the GPU")
            self._put("comp", clean, clean_k)
        elif self.need_comp:
            if self.gpu_jpeg:
                if comp_k != "comp.jpg":
                    raise SampleError(f"{comp_k}: not a JPEG, but the batch is decoded on the GPU")
                size = _jpeg_size(sample[comp_k], comp_k)
                if size != (self.picture or self.jpeg_size or size):
                    raise SampleError(f"{comp_k}: a {size[0]}x{size[1]} picture in a batch of "
                                      f"{(self.picture or self.jpeg_size)[0]}x{(self.picture or self.jpeg_size)[1]} pictures")
                jpeg = sample[comp_k]
            else:
                self._put("comp", _decode(sample[comp_k], comp_k, self.picture), comp_k)
        if self.need_clean:
            self._put("clean", clean, clean_k)
        if self.caches is not None:
            url = sample.get("__url__", "")
            d = os.path.dirname(url)
            cache = self.caches.get(d) or self.caches.get(folder_key(d))
            if cache is None:
                raise SampleError(f"no teacher cache for shards in {d}")
            row = cache.lookup(key)
            if self.teacher is None:
                self.teacher = self.empty((self.size,) + row.shape, torch.float16)
            self.teacher.numpy()[self.n] = row
        if jpeg is not None:
            self.jpeg_size = size
            self.jpeg.append(jpeg)
        self.keys.append(key)
        self.labels.append(label)

    def finish(self) -> dict:
        n = self.n
        labels = self.empty((self.size,), torch.long)[:n]
        labels.numpy()[:] = self.labels
        out: dict[str, Any] = {"key": self.keys, "label": labels}
        views = {k: t[:n].permute(0, 3, 1, 2) for k, t in self.pixels.items()}
        if self.need_comp:
            if self.jpeg:
                lengths = [len(b) for b in self.jpeg]
                out["comp_jpeg"] = torch.frombuffer(bytearray(b"".join(self.jpeg)), dtype=torch.uint8)
                out["comp_jpeg_lengths"] = torch.tensor(lengths, dtype=torch.long)
            else:
                out["comp"] = views["comp"]
        if self.need_clean:
            out["clean"] = views["clean"]
        if self.teacher is not None:
            out["teacher"] = self.teacher[:n]
        if self.ring is not None:
            out["__worker__"], out["__seq__"] = self.ring.sent()
        return out


def decode_batches(batch_size: int, need_comp: bool, need_clean: bool, caches: dict | None, skips: "SkipLog",
                   partial: bool = False, gpu_jpeg: bool = False, acked: torch.Tensor | None = None,
                   picture: tuple[int, int] | None = None):
    """Decode each sample into the batch being filled (comp.* with the pipeline's decoders,
    clean.* only when needed, the teacher's cached logits); emit full batches (and the last
    partial one when ``partial``).  A sample that fails is skipped and recorded, never the run.

    ``gpu_jpeg``: JPEG bitstreams are left undecoded (``comp_jpeg``: the bytes end to end,
    ``comp_jpeg_lengths``) for :func:`trainer.loop.decode_on_device`; their headers are checked
    here (pixel budget, equal sizes).  ``acked``: in a worker, reuse the batch buffers the main
    process has copied out (:class:`_Ring`, :class:`_CopyOut`)."""
    def stage(src):
        w, _ = _worker()
        ring = _Ring(acked, w) if acked is not None and get_worker_info() is not None else None
        batch = _Batch(batch_size, need_comp, need_clean, caches, gpu_jpeg, ring, picture)
        for s in src:
            try:
                batch.add(s)
            except Exception as exc:  # SampleError, KeyError from a cache, a decoder's bug
                where = f"{os.path.basename(str(s.get('__url__', '?')))}:{s.get('__key__', '?')}"
                skips.add(1, f"{where}: {exc if isinstance(exc, SampleError) else _first_line(exc)}")
                continue
            if batch.n == batch_size:
                yield batch.finish()
                batch = _Batch(batch_size, need_comp, need_clean, caches, gpu_jpeg, ring, picture)
        if partial and batch.n:
            yield batch.finish()
    return stage


def epoch_stage(n_batches: int, plan: list[WorkerShare] | None = None):
    """with_epoch: this worker's share of exactly ``n_batches`` per rank (its quota in ``plan``,
    or an even share)."""
    def stage(src):
        w, n = _worker()
        share = plan[w].batches if plan is not None else n_batches // n + (1 if w < n_batches % n else 0)
        yield from islice(src, share)
    return stage


def attach_skips(skips: SkipLog):
    """Last stage: each batch carries the skip records made since the previous batch; what is
    left at the end of the stream comes in a batch without samples."""
    def stage(src):
        for batch in src:
            batch["skips"] = skips.drain()
            yield batch
        rest = skips.drain()
        if rest:
            yield {"key": [], "label": torch.zeros(0, dtype=torch.long), "skips": rest}
    return stage


def _limit_samples(limit: int, world: int):
    def stage(src):
        _, n = _worker()
        yield from islice(src, max(1, math.ceil(limit / (world * n))))
    return stage


# -- loaders ------------------------------------------------------------------------------------
@dataclass
class LoaderSpec:
    batch_size: int = 32
    workers: int | None = None           # None: default_workers()
    shuffle_buffer: int = 1000
    resampled: bool = False
    seed: int = 0
    gpu_jpeg: bool = False               # leave JPEG bitstreams for the GPU (trainer.loop.decode_on_device)


def default_workers() -> int:
    """Loader processes per rank when ``--workers`` is not given: the CPUs this process may run
    on, shared by the node's ranks (torchrun's LOCAL_WORLD_SIZE), less one for the rank's own
    process; at least 1, at most 32."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(32, cpus // local - 1))


def batches_per_epoch(count: int, batch_size: int, world: int, limit: int | None = None,
                      steps: int | None = None) -> int:
    n = count if limit is None else min(count, int(limit))
    n_batches = max(1, n // (world * batch_size))
    return min(n_batches, steps) if steps else n_batches


def _sources(sets: list[ShardSet], need_comp: bool, need_clean: bool) -> list[tuple[ShardSet, bool]]:
    """(the ShardSet to read, whether to join its reference's clean crops) per setting: a
    split-layout setting is read alone when the clean crop is not needed, with its reference
    when both are, and its reference alone when only the clean crop is (stability training)."""
    out = []
    for s in sets:
        if s.reference is None:
            out.append((s, False))
        elif need_clean and not need_comp:
            out.append((s.reference, False))
        else:
            out.append((s, need_clean))
    return out


def _fields(s: ShardSet, need_comp: bool, need_clean: bool, join: bool) -> tuple[str, ...]:
    """The members the decoder needs from ``s``'s tars: the others are skipped unread (a pair-layout
    sample's clean crop is 90% of its bytes)."""
    comp_from_clean = need_comp and s.lossless
    return ("cls",) + (("comp",) if need_comp and not s.lossless else ()) + \
        (("clean",) if (need_clean and not join) or comp_from_clean else ())


def _items(sources, need_comp: bool = True, need_clean: bool = False) -> list[dict]:
    out = []
    for s, join in sources:
        fields = _fields(s, need_comp, need_clean, join)
        for u in s.shards + s.missing:
            item = {"url": u, "fields": fields}
            if join:
                item["ref"] = os.path.join(s.reference.folder, os.path.basename(u))
            out.append(item)
    return out


def _expected(sources) -> dict[str, int]:
    return {url: n for s, _ in sources for url, n in s.expected().items()}


def make_train_loader(sets: list[ShardSet], spec: LoaderSpec, *, epoch: int, rank: int = 0,
                      world: int = 1, need_comp: bool = True, need_clean: bool = False,
                      caches: dict | None = None, limit: int | None = None, steps: int | None = None,
                      pin_memory: bool = False, batches: int | None = None):
    """(loader, n_batches): exactly n_batches full batches on every rank: ``count // (world x
    batch)`` (``limit`` samples at most, ``steps`` caps it), or ``batches`` when given (more
    than the data holds: the workers start their shards again; the benchmarks' long epochs)."""
    sources = _sources(sets, need_comp, need_clean)
    items = _items(sources, need_comp, need_clean)
    count = sum(s.count for s, _ in sources)
    n_batches = batches if batches is not None else batches_per_epoch(count, spec.batch_size, world, limit, steps)
    workers = default_workers() if spec.workers is None else spec.workers
    seed = mix_seed(spec.seed, epoch)
    if not spec.resampled:
        if len(items) < world:
            raise LoaderError(f"{len(items)} shard(s) for {world} ranks: every rank needs at least one "
                              "shard; make smaller shards or use --resampled")
        per_rank = len(items) // world
        if workers > per_rank:
            log.log(logging.WARNING if spec.workers is not None else logging.INFO,
                    "%d worker(s) but only %d shard(s) per rank: using %d worker(s)", workers, per_rank, per_rank)
            workers = per_rank
    skips = SkipLog()
    acked = _acks(workers)
    if spec.resampled:
        plan = None
        stages: list = [ShardList(items), resampled_shards(seed, rank)]
    else:
        plan = epoch_plan(items, _expected(sources), n_batches, seed=seed, rank=rank, world=world, workers=workers)
        stages = [PlannedShards(plan, seed, rank)]
    stages += [
        tar_samples(_expected(sources), skips),
        shuffle_buffer(spec.shuffle_buffer, seed, rank, plan, spec.batch_size),
        decode_batches(spec.batch_size, need_comp, need_clean, caches, skips, gpu_jpeg=spec.gpu_jpeg,
                       acked=acked, picture=picture_size(s.manifest for s, _ in sources)),
        epoch_stage(n_batches, plan),
        attach_skips(skips),
    ]
    return _loader(wds.DataPipeline(*stages), workers, pin_memory, acked), n_batches


def make_eval_loader(sets: list[ShardSet], batch_size: int, *, workers: int | None = 0, rank: int = 0,
                     world: int = 1, need_comp: bool = True, need_clean: bool = False,
                     caches: dict | None = None, limit: int | None = None, pin_memory: bool = False,
                     gpu_jpeg: bool = False):
    """Every sample once (split across ranks by shard), in order, last batch partial."""
    sources = _sources(sets, need_comp, need_clean)
    items = _items(sources, need_comp, need_clean)
    n_rank = len(items[rank::world]) if world > 1 else len(items)
    workers = max(0, min(default_workers() if workers is None else workers, n_rank))
    skips = SkipLog()
    acked = _acks(workers)
    stages: list = [ShardList(items), split_by_node(rank, world), split_by_worker,
                    tar_samples(_expected(sources), skips)]
    if limit is not None:
        stages.append(_limit_samples(limit, world))
    stages += [decode_batches(batch_size, need_comp, need_clean, caches, skips, partial=True, gpu_jpeg=gpu_jpeg,
                              acked=acked, picture=picture_size(s.manifest for s, _ in sources)),
               attach_skips(skips)]
    return _loader(wds.DataPipeline(*stages), workers, pin_memory, acked)


def _acks(workers: int) -> torch.Tensor | None:
    """Per worker, the last batch the main process has copied out (shared memory)."""
    return torch.zeros(workers, dtype=torch.int64).share_memory_() if workers > 0 else None


#: batches a worker may make ahead of the main process (torch's default)
PREFETCH = 2


#: How loader workers start.  The pipeline's stages are closures over the epoch plan and the
#: shared batch buffers, which only "fork" hands to a worker without pickling.  Python's default
#: is not always fork: a process started by "spawn" (as parallel experiment seeds are), and
#: Python >= 3.14 on Linux ("forkserver"), would otherwise fail at the first worker.  The
#: workers never touch CUDA, so forking after CUDA is initialised is safe (torch's own default).
_WORKER_START = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def _loader(pipeline, workers: int, pin_memory: bool, acked: torch.Tensor | None = None):
    pin = pin_memory and torch.cuda.is_available()
    if workers <= 0:
        return _Pinned(pipeline) if pin else pipeline
    loader = wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
                           persistent_workers=False, prefetch_factor=PREFETCH,
                           multiprocessing_context=_WORKER_START)
    return _CopyOut(loader, acked, copy=not pin)


class _Pinned:
    """In-process loading on CUDA: page-locked batches, so that copies to the GPU are asynchronous."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __iter__(self):
        for batch in self.pipeline:
            yield {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _CopyOut:
    """The main process's end of a worker loader: each batch out of the worker's shared-memory
    buffers, then the worker told it may use them again.  On CUDA torch's pin-memory thread has
    already copied the batch into page-locked memory (in the background); otherwise the copy
    is made here.  The last buffers received stay referenced, so that a buffer sent again is
    not mapped again."""

    def __init__(self, loader, acked: torch.Tensor, copy: bool):
        self.loader, self.acked, self.copy = loader, acked, copy

    def __iter__(self):
        from collections import deque
        mapped: deque = deque(maxlen=64)
        for batch in self.loader:
            worker, seq = batch.pop("__worker__", None), batch.pop("__seq__", None)
            if seq is not None and self.copy:
                for k, v in batch.items():
                    if isinstance(v, torch.Tensor):
                        mapped.append(v)
                        batch[k] = torch.empty_like(v).copy_(v)
            if seq is not None:
                self.acked[worker] = seq
            yield batch


def folder_key(path: str | os.PathLike) -> str:
    """How caches and samples name a setting folder (absolute path)."""
    return os.path.abspath(Path(path))
