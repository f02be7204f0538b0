"""The loaders: the stages of :mod:`trainer.data` put together for training (the epoch plan)
and evaluation (every sample once), and the plumbing between the worker processes and the
main one (shared-memory batches handed back, page-locked copies on CUDA)."""
from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass

import torch
import webdataset as wds

from ..clitools import UserError
from .completeness import picture_size
from ..distributed import mix_seed
from .batch import decode_batches
from .mixing import MixedSamples, mixed_plan
from .plan import (PlannedShards, ShardList, epoch_plan, epoch_stage, limit_samples, resampled_shards,
                   shuffle_buffer, split_by_node, split_by_worker)
from .samples import tar_samples
from .shardsets import ShardSet
from .skips import SkipLog, attach_skips

log = logging.getLogger("trainer.data")


class LoaderError(UserError, ValueError):
    """Shards that cannot feed the run as configured (too few for the ranks ...)."""


@dataclass
class LoaderSpec:
    batch_size: int = 32
    workers: int | None = None           # None: default_workers()
    shuffle_buffer: int = 1000
    resampled: bool = False
    seed: int = 0
    gpu_jpeg: bool = False               # leave JPEG bitstreams for the GPU (trainer.data.DeviceJpeg)


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
                      pin_memory: bool = False, batches: int | None = None, weights: list[float] | None = None):
    """(loader, n_batches): exactly n_batches full batches on every rank: ``count // (world x
    batch)`` (``limit`` samples at most, ``steps`` caps it), or ``batches`` when given (more
    than the data holds: the workers start their shards again; the benchmarks' long epochs).

    Several settings: every sample's setting is drawn by ``weights`` (one per set, default
    equal; :mod:`trainer.data.mixing`), so that every batch mixes them; each sample then
    carries its setting's name (``batch["setting"]``).  ``count`` is then the samples of the
    settings with a weight."""
    sources = _sources(sets, need_comp, need_clean)
    mixed = len(sets) > 1
    weights = [1.0] * len(sets) if weights is None else list(weights)
    items = _items(sources, need_comp, need_clean)
    count = sum(s.count for (s, _), w in zip(sources, weights) if w > 0) if mixed else sum(s.count for s, _ in sources)
    n_batches = batches if batches is not None else batches_per_epoch(count, spec.batch_size, world, limit, steps)
    workers = default_workers() if spec.workers is None else spec.workers
    seed = mix_seed(spec.seed, epoch)
    if mixed:
        fewest = min(len(s.shards) for s, _ in sources)
        if workers > max(1, fewest // world):
            log.info("%d worker(s) but a setting has only %d shard(s) per rank: using %d worker(s)", workers,
                     fewest // world, max(1, fewest // world))
            workers = max(1, fewest // world)
    elif not spec.resampled:
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
    read = tar_samples(_expected(sources), skips)
    if mixed:
        plan = mixed_plan([_items([src], need_comp, need_clean) for src in sources], _expected(sources), n_batches,
                          seed=seed, rank=rank, world=world, workers=workers)
        stages: list = [MixedSamples(plan, weights, [s.name for s in sets], seed, rank, read)]
    elif spec.resampled:
        plan = None
        stages = [ShardList(items), resampled_shards(seed, rank), read]
    else:
        plan = epoch_plan(items, _expected(sources), n_batches, seed=seed, rank=rank, world=world, workers=workers)
        stages = [PlannedShards(plan, seed, rank), read]
    stages += [
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
        stages.append(limit_samples(limit, world))
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
