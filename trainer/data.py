"""Streaming input over the pipeline's webdataset shards.

The loader is an explicit list of stages (open_clip style)::

    shard list -> shuffled shards (or resampled shards) -> split_by_node -> split_by_worker
    -> [repeat shards, training only] -> tar samples (counted against the manifest)
    -> shuffle buffer -> decode (comp.* via pipeline.codecs.decode_any; clean.* only when
    needed) -> uint8 CHW tensors -> batched -> epoch (exactly count // (world x batch)
    batches per rank) -> skip records attached to the batches

Every stage is seeded from (seed, epoch, rank, worker), so an epoch's order depends on
nothing else: a resumed run sees the same data as an uninterrupted one.  In training each
worker cycles over its own shards until its quota of batches is produced, so all ranks run
exactly the same number of equal-sized batches (no DDP hang); this needs at least
``world`` shards (``resampled=True`` draws shards with replacement instead).

Nothing is lost silently.  A truncated or unreadable tar, a shard with fewer samples than
its manifest lists, a sample without ``.cls`` or with an undecodable bitstream is skipped
and recorded; each batch carries the records of what was skipped since the previous one
(``batch["skips"]``: ``(count, reason)`` pairs; a batch with no samples may carry the last
records).  The loop adds them up and :func:`check_skips` fails a run that loses more than
``max_skip`` of its data.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import random
from dataclasses import dataclass
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

from .clitools import UserError
from .distributed import mix_seed
from .losses import LabelError

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
    ``count`` is the number of samples the manifest lists for the selected shards."""
    folder: str
    shards: list[str]
    manifest: Manifest
    count: int

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
        return {s: counts[os.path.basename(s)] for s in self.shards if os.path.basename(s) in counts}


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


def group_shards(patterns: str | list[str]) -> list[ShardSet]:
    """Expand shard patterns and group the shards by folder (one folder = one setting);
    read and check each folder's manifest.json."""
    by_dir: dict[str, list[str]] = {}
    for s in expand_shards(patterns):
        by_dir.setdefault(os.path.dirname(s), []).append(s)
    out = []
    for d, shards in sorted(by_dir.items()):
        m = Manifest.load(d)
        counts = m.shard_counts
        names = [os.path.basename(s) for s in shards]
        count = sum(counts[n] for n in names) if counts and all(n in counts for n in names) else int(m["count"])
        out.append(ShardSet(d, shards, m, count))
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
    """Stage 0: the shard list, as dict(url=...)."""

    def __init__(self, urls: list[str]):
        self.urls = list(urls)

    def __iter__(self):
        for u in self.urls:
            yield {"url": u}


def shuffled_shards(seed: int | None):
    """Permute the shard list with a seed shared by all ranks and workers (so the later splits
    are disjoint); None: keep the order."""
    def stage(src):
        items = list(src)
        if seed is not None:
            random.Random(seed).shuffle(items)
        yield from items
    return stage


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


def repeat_shards(seed: int, rank: int):
    """Cycle over this worker's shards forever (reshuffled each pass); the epoch stage cuts it."""
    def stage(src):
        items = list(src)
        if not items:
            return
        w, _ = _worker()
        rng = random.Random(mix_seed(seed, rank, w, 7))
        while True:
            yield from items
            rng.shuffle(items)
    return stage


def tar_samples(expected: dict[str, int], skips: SkipLog):
    """webdataset's tar reader, one shard at a time, so that what a shard loses is counted:
    a shard that cannot be opened or read to the end, or holds fewer samples than its
    manifest lists, records the missing samples in ``skips``."""
    def stage(src):
        for shard in src:
            url = shard["url"]
            want = expected.get(url)
            got = 0
            try:
                for sample in wds.tarfile_samples(iter([dict(shard)])):
                    got += 1
                    yield sample
            except Exception as exc:  # truncated / corrupt tar: the rest of the shard is lost
                lost = max(1, want - got) if want is not None else 1
                skips.add(lost, f"{os.path.basename(url)}: unreadable after {got} sample(s) "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
                continue
            if want is not None and got < want:
                skips.add(want - got, f"{os.path.basename(url)}: {got} samples, the manifest lists {want}")
    return stage


def shuffle_buffer(bufsize: int, seed: int, rank: int):
    """webdataset's shuffle with a (seed, rank, worker) generator made in the worker."""
    def stage(src):
        if bufsize <= 1:
            yield from src
            return
        w, _ = _worker()
        rng = random.Random(mix_seed(seed, rank, w, 11))
        yield from wds.shuffle(bufsize, initial=bufsize, rng=rng)(src)
    return stage


class SampleError(ValueError):
    """A sample that cannot be used (no label, undecodable bitstream ...)."""


def _chw(a: np.ndarray) -> torch.Tensor:
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return torch.from_numpy(np.array(a[:, :, :3], copy=True)).permute(2, 0, 1).contiguous()


def _decode_image(data: bytes, what: str) -> torch.Tensor:
    from pipeline.codecs import decode_any
    try:
        return _chw(decode_any(data))
    except MemoryError:
        raise SampleError(f"{what}: out of memory while decoding") from None
    except Exception as exc:
        raise SampleError(f"{what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _label(value) -> int:
    try:
        return int(value.decode() if isinstance(value, (bytes, bytearray)) else value)
    except (ValueError, UnicodeDecodeError):
        raise SampleError(f"label {value!r} is not a class index") from None


def decoder(need_comp: bool, need_clean: bool, caches: dict | None):
    """sample dict -> dict(key, comp, clean, label, teacher) with uint8 CHW tensors.
    ``caches``: setting folder -> TeacherCache (adds the teacher logits)."""
    def decode(sample: dict) -> dict:
        key = sample["__key__"]
        if "cls" not in sample:
            raise SampleError("no .cls member")
        clean_k = next((k for k in sample if k.startswith("clean.")), None)
        comp_k = next((k for k in sample if k.startswith("comp.")), None)
        out: dict[str, Any] = {"key": key, "label": _label(sample["cls"])}
        clean = None
        if need_clean or (need_comp and comp_k is None):
            if clean_k is None:
                raise SampleError("no clean.* member")
            clean = _decode_image(sample[clean_k], clean_k)
        if need_comp:
            out["comp"] = _decode_image(sample[comp_k], comp_k) if comp_k is not None else clean  # lossless: x~ = x
        if need_clean:
            out["clean"] = clean
        if caches is not None:
            d = os.path.abspath(os.path.dirname(sample.get("__url__", "")))
            cache = caches.get(d)
            if cache is None:
                raise SampleError(f"no teacher cache for shards in {d}")
            out["teacher"] = torch.from_numpy(cache.lookup(key).astype(np.float16))
        return out
    return decode


def decode_stage(fn, skips: SkipLog):
    """Decode each sample; one that fails is skipped and recorded (never the whole run)."""
    def stage(src):
        for s in src:
            try:
                yield fn(s)
            except Exception as exc:  # SampleError, KeyError from a cache, a decoder's bug
                where = f"{os.path.basename(str(s.get('__url__', '?')))}:{s.get('__key__', '?')}"
                skips.add(1, f"{where}: {exc if isinstance(exc, SampleError) else f'{type(exc).__name__}: {exc}'}")
    return stage


def collate(samples: list[dict]) -> dict:
    out: dict[str, Any] = {"key": [s["key"] for s in samples],
                           "label": torch.tensor([s["label"] for s in samples], dtype=torch.long)}
    for k in ("comp", "clean", "teacher"):
        if k in samples[0]:
            out[k] = torch.stack([s[k] for s in samples])
    return out


def epoch_stage(n_batches: int):
    """with_epoch: this worker's share of exactly ``n_batches`` per rank."""
    def stage(src):
        w, n = _worker()
        share = n_batches // n + (1 if w < n_batches % n else 0)
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
    workers: int = 2
    shuffle_buffer: int = 1000
    resampled: bool = False
    seed: int = 0


def batches_per_epoch(count: int, batch_size: int, world: int, limit: int | None = None,
                      steps: int | None = None) -> int:
    n = count if limit is None else min(count, int(limit))
    n_batches = max(1, n // (world * batch_size))
    return min(n_batches, steps) if steps else n_batches


def _expected(sets: list[ShardSet]) -> dict[str, int]:
    return {url: n for s in sets for url, n in s.expected().items()}


def make_train_loader(sets: list[ShardSet], spec: LoaderSpec, *, epoch: int, rank: int = 0,
                      world: int = 1, need_comp: bool = True, need_clean: bool = False,
                      caches: dict | None = None, limit: int | None = None, steps: int | None = None,
                      pin_memory: bool = False):
    """(loader, n_batches): exactly n_batches full batches on every rank (``steps`` caps it)."""
    urls = [u for s in sets for u in s.shards]
    count = sum(s.count for s in sets)
    n_batches = batches_per_epoch(count, spec.batch_size, world, limit, steps)
    workers = spec.workers
    seed = mix_seed(spec.seed, epoch)
    if not spec.resampled:
        if len(urls) < world:
            raise LoaderError(f"{len(urls)} shard(s) for {world} ranks: every rank needs at least one "
                            "shard; make smaller shards or use --resampled")
        per_rank = len(urls) // world
        if workers > per_rank:
            log.warning("%d worker(s) but only %d shard(s) per rank: using %d worker(s)", workers, per_rank, per_rank)
            workers = per_rank
    skips = SkipLog()
    stages: list = [ShardList(urls)]
    if spec.resampled:
        stages += [resampled_shards(seed, rank)]
    else:
        stages += [shuffled_shards(seed), split_by_node(rank, world), wds.split_by_worker, repeat_shards(seed, rank)]
    stages += [
        tar_samples(_expected(sets), skips),
        shuffle_buffer(spec.shuffle_buffer, seed, rank),
        decode_stage(decoder(need_comp, need_clean, caches), skips),
        wds.batched(spec.batch_size, collation_fn=collate, partial=False),
        epoch_stage(n_batches),
        attach_skips(skips),
    ]
    return _loader(wds.DataPipeline(*stages), workers, pin_memory), n_batches


def make_eval_loader(sets: list[ShardSet], batch_size: int, *, workers: int = 0, rank: int = 0,
                     world: int = 1, need_comp: bool = True, need_clean: bool = False,
                     caches: dict | None = None, limit: int | None = None, pin_memory: bool = False):
    """Every sample once (split across ranks by shard), in order, last batch partial."""
    urls = [u for s in sets for u in s.shards]
    n_rank = len(urls[rank::world]) if world > 1 else len(urls)
    workers = max(0, min(workers, n_rank))
    skips = SkipLog()
    stages: list = [ShardList(urls), split_by_node(rank, world), wds.split_by_worker,
                    tar_samples(_expected(sets), skips)]
    if limit is not None:
        stages.append(_limit_samples(limit, world))
    stages += [decode_stage(decoder(need_comp, need_clean, caches), skips),
               wds.batched(batch_size, collation_fn=collate, partial=True),
               attach_skips(skips)]
    return _loader(wds.DataPipeline(*stages), workers, pin_memory)


def _loader(pipeline, workers: int, pin_memory: bool):
    if workers <= 0:
        return pipeline
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers,
                         pin_memory=pin_memory, persistent_workers=False)


def folder_key(path: str | os.PathLike) -> str:
    """How caches and samples name a setting folder (absolute path)."""
    return os.path.abspath(Path(path))
