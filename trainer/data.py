"""Streaming input pipeline over the pipeline's webdataset shards.

The pipeline is an explicit list of stages (open_clip style)::

    shard list -> shuffled shards (or resampled shards) -> split_by_node -> split_by_worker
    -> [repeat shards, training only] -> tarfile_to_samples(handler=warn) -> shuffle buffer
    -> decode (comp.* via pipeline.codecs.decode_any; clean.* only when needed)
    -> to tensors (uint8 CHW; the model turns them into floats 0..1) -> batched
    -> epoch (exactly manifest count // (world x batch) batches per rank)

Every stage is seeded from (seed, epoch, rank, worker), so an epoch's order depends on
nothing else: a resumed run sees the same data as an uninterrupted one.  In training each
worker cycles over its own shards until its quota of batches is produced, so all ranks run
exactly the same number of equal-sized batches (no DDP hang); this needs at least
``world`` shards (``resampled=True`` draws shards with replacement instead and has no such
requirement).
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from .utils import expand_shards, mix_seed, read_json

log = logging.getLogger(__name__)


# -- settings: shards grouped by folder --------------------------------------------------------
@dataclass
class Setting:
    """The shards of one folder (= one setting) and its manifest."""
    dir: str
    shards: list[str]
    manifest: dict
    count: int  # samples in the selected shards

    @property
    def name(self) -> str:
        return str(self.manifest.get("setting") or Path(self.dir).name)

    @property
    def codec(self) -> str | None:
        return self.manifest.get("codec")

    @property
    def q(self):
        return self.manifest.get("q")

    @property
    def lossless(self) -> bool:
        return self.codec == "lossless" or self.name == "lossless"

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("num_classes") or 1000)


def group_settings(patterns: str | list[str]) -> list[Setting]:
    """Expand shard patterns and group the shards by folder; read each folder's manifest.json."""
    by_dir: dict[str, list[str]] = {}
    for s in expand_shards(patterns):
        by_dir.setdefault(os.path.dirname(s), []).append(s)
    out = []
    for d, shards in sorted(by_dir.items()):
        mpath = os.path.join(d, "manifest.json")
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"{mpath} is missing: shards must come with the pipeline's manifest")
        m = read_json(mpath)
        counts = {e["name"]: int(e["count"]) for e in m.get("shards", [])}
        names = [os.path.basename(s) for s in shards]
        if counts and all(n in counts for n in names):
            count = sum(counts[n] for n in names)
        else:
            count = int(m["count"])
        out.append(Setting(d, shards, m, count))
    return out


# -- teacher-logit caches ---------------------------------------------------------------------
class TeacherCache:
    """fp16 teacher logits (``.npy``, memory-mapped) + ``.json`` meta with the sample keys.

    Opened lazily (in each loader worker)."""

    def __init__(self, path: str | os.PathLike):
        self.npy = str(path)
        self.meta_path = str(Path(path).with_suffix(".json"))
        self._logits = None
        self._index: dict[str, int] | None = None
        self._meta: dict | None = None

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = read_json(self.meta_path)
        return self._meta

    def _open(self):
        if self._logits is None:
            self._logits = np.load(self.npy, mmap_mode="r")
            self._index = {k: i for i, k in enumerate(self.meta["keys"])}

    def __len__(self) -> int:
        return int(self.meta["count"])

    def lookup(self, key: str) -> np.ndarray:
        self._open()
        try:
            return np.asarray(self._logits[self._index[key]])
        except KeyError:
            raise KeyError(f"sample {key!r} is not in the teacher cache {self.npy}: rebuild it "
                           "(python -m trainer.cache_teacher)") from None

    def __getstate__(self):
        # workers re-open the files lazily (the key list can be large: don't pickle it)
        return {"npy": self.npy, "meta_path": self.meta_path, "_logits": None, "_index": None, "_meta": None}


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
    """Permute the shard list with a seed shared by all ranks/workers (so the later splits
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
    def stage(src):
        yield from islice(src, rank, None, world) if world > 1 else src
    return stage


def split_by_worker(src):
    w, n = _worker()
    yield from islice(src, w, None, n) if n > 1 else src


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


def shuffle_buffer(bufsize: int, seed: int, rank: int):
    """Reservoir shuffle with a (seed, rank, worker) generator."""
    def stage(src):
        if bufsize <= 1:
            yield from src
            return
        w, _ = _worker()
        rng = random.Random(mix_seed(seed, rank, w, 11))
        buf: list = []
        for s in src:
            buf.append(s)
            if len(buf) < bufsize:
                continue
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
        rng.shuffle(buf)
        yield from buf
    return stage


def _chw(a: np.ndarray) -> torch.Tensor:
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return torch.from_numpy(np.array(a[:, :, :3], copy=True)).permute(2, 0, 1).contiguous()


def _decode_image(data: bytes) -> np.ndarray:
    from pipeline.codecs import decode_any
    try:
        return decode_any(data)
    except Exception:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


def decoder(need_comp: bool, need_clean: bool, caches: dict[str, TeacherCache] | None):
    """sample dict -> dict(key, comp, clean, label, teacher) with uint8 CHW tensors.
    ``caches``: setting folder -> TeacherCache (adds the teacher logits)."""
    def decode(sample: dict) -> dict:
        key = sample["__key__"]
        clean_k = next((k for k in sample if k.startswith("clean.")), None)
        comp_k = next((k for k in sample if k.startswith("comp.")), None)
        out: dict[str, Any] = {"key": key}
        clean = None
        if need_clean or (need_comp and comp_k is None):
            if clean_k is None:
                raise ValueError(f"{key}: no clean.* member")
            clean = _chw(_decode_image(sample[clean_k]))
        if need_comp:
            out["comp"] = _chw(_decode_image(sample[comp_k])) if comp_k is not None else clean  # lossless: x~ = x
        if need_clean:
            out["clean"] = clean
        c = sample.get("cls")
        out["label"] = int(c.decode() if isinstance(c, bytes) else c) if c is not None else -1
        if caches is not None:
            d = os.path.dirname(sample.get("__url__", ""))
            cache = caches.get(os.path.abspath(d)) if d else None
            if cache is None:
                raise KeyError(f"no teacher cache for shards in {d!r}")
            out["teacher"] = torch.from_numpy(cache.lookup(key).astype(np.float16))
        return out
    return decode


def decode_stage(fn, handler=wds.warn_and_continue):
    def stage(src):
        for s in src:
            try:
                yield fn(s)
            except KeyError:
                raise
            except Exception as exn:  # a corrupt sample: warn and go on
                if handler(exn):
                    continue
                break
    return stage


def collate(samples: list[dict]) -> dict:
    out: dict[str, Any] = {"key": [s["key"] for s in samples],
                           "label": torch.tensor([s["label"] for s in samples], dtype=torch.long)}
    for k in ("comp", "clean", "teacher"):
        if k in samples[0]:
            out[k] = torch.stack([s[k] for s in samples])
    return out


def batched(batch_size: int, partial: bool):
    def stage(src):
        buf = []
        for s in src:
            buf.append(s)
            if len(buf) == batch_size:
                yield collate(buf)
                buf = []
        if buf and partial:
            yield collate(buf)
    return stage


def epoch_stage(n_batches: int):
    """with_epoch: this worker's share of exactly ``n_batches`` per rank."""
    def stage(src):
        w, n = _worker()
        share = n_batches // n + (1 if w < n_batches % n else 0)
        yield from islice(src, share)
    return stage


# -- loader -------------------------------------------------------------------------------------
@dataclass
class LoaderSpec:
    batch_size: int = 32
    workers: int = 2
    shuffle_buffer: int = 1000
    resampled: bool = False
    seed: int = 0


def batches_per_epoch(count: int, batch_size: int, world: int, limit: int | None = None) -> int:
    n = count if limit is None else min(count, int(limit))
    return max(1, n // (world * batch_size))


def make_train_loader(settings: list[Setting], spec: LoaderSpec, *, epoch: int, rank: int = 0,
                      world: int = 1, need_comp: bool = True, need_clean: bool = False,
                      caches: dict[str, TeacherCache] | None = None, limit: int | None = None,
                      pin_memory: bool = False):
    """(loader, n_batches): exactly n_batches full batches on every rank."""
    urls = [u for s in settings for u in s.shards]
    count = sum(s.count for s in settings)
    n_batches = batches_per_epoch(count, spec.batch_size, world, limit)
    workers = spec.workers
    seed = mix_seed(spec.seed, epoch)
    if not spec.resampled:
        if len(urls) < world:
            raise ValueError(f"{len(urls)} shard(s) for {world} ranks: every rank needs at least one "
                             "shard; make smaller shards or use --resampled")
        per_rank = len(urls) // world
        if workers > per_rank:
            log.warning("%d worker(s) but only %d shard(s) per rank: using %d worker(s)", workers, per_rank, per_rank)
            workers = per_rank
    stages: list = [ShardList(urls)]
    if spec.resampled:
        stages += [resampled_shards(seed, rank)]
    else:
        stages += [shuffled_shards(seed), split_by_node(rank, world), split_by_worker, repeat_shards(seed, rank)]
    stages += [
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        shuffle_buffer(spec.shuffle_buffer, seed, rank),
        decode_stage(decoder(need_comp, need_clean, caches)),
        batched(spec.batch_size, partial=False),
        epoch_stage(n_batches),
    ]
    return _loader(wds.DataPipeline(*stages), workers, pin_memory), n_batches


def make_eval_loader(settings: list[Setting], batch_size: int, *, workers: int = 0, rank: int = 0,
                     world: int = 1, need_comp: bool = True, need_clean: bool = False,
                     caches: dict[str, TeacherCache] | None = None, limit: int | None = None,
                     pin_memory: bool = False):
    """Every sample once (split across ranks by shard), in order, last batch partial."""
    urls = [u for s in settings for u in s.shards]
    n_rank = len(urls[rank::world]) if world > 1 else len(urls)
    workers = max(0, min(workers, n_rank))
    stages: list = [ShardList(urls), split_by_node(rank, world), split_by_worker,
                    wds.tarfile_to_samples(handler=wds.warn_and_continue)]
    if limit is not None:
        stages.append(_limit_samples(limit, world))
    stages += [decode_stage(decoder(need_comp, need_clean, caches)), batched(batch_size, partial=True)]
    return _loader(wds.DataPipeline(*stages), workers, pin_memory)


def _limit_samples(limit: int, world: int):
    def stage(src):
        _, n = _worker()
        yield from islice(src, max(1, math.ceil(limit / (world * n))))
    return stage


def _loader(pipeline, workers: int, pin_memory: bool):
    if workers <= 0:
        return pipeline
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers,
                         pin_memory=pin_memory, persistent_workers=False)


def settings_summary(settings: list[Setting]) -> str:
    return ", ".join(f"{s.name} ({s.count} samples, {len(s.shards)} shards)" for s in settings)


def dump_keys(loader) -> list[str]:
    return [k for b in loader for k in b["key"]]


__all__ = ["Setting", "group_settings", "TeacherCache", "LoaderSpec", "make_train_loader", "settings_summary",
           "make_eval_loader", "batches_per_epoch", "collate", "json"]
