"""The epoch plan and the stages that follow it: which shards each rank and worker reads, how
many batches it makes, and the seeded shuffles (every one from (seed, epoch, rank, worker))."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import islice

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from ..distributed import mix_seed


def worker() -> tuple[int, int]:
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
        w, _ = worker()
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
    w, n = worker()
    yield from islice(src, w, None, n) if n > 1 else src


@dataclass(frozen=True)
class WorkerShare:
    """What one loader worker of one rank reads in an epoch."""
    shards: list[dict]      # its shard items, in reading order
    samples: int            # what they hold (the manifests' counts)
    batches: int            # its quota of the rank's batches
    by_setting: tuple = ()  # mixed runs (trainer.data.mixing): its shards of each setting


def apportion(total: int, weights: list[int]) -> list[int]:
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
    quotas = apportion(n_batches, [s if sh else 0 for s, sh in zip(samples, shares)])
    return [WorkerShare(sh, s, q) for sh, s, q in zip(shares, samples, quotas)]


class PlannedShards(IterableDataset):
    """Stage 0 of a training epoch: this worker's shards of the plan, one pass as planned,
    then (only if its quota needs more: skipped samples, a shortfall) further passes, each
    reshuffled with a (seed, rank, worker) generator."""

    def __init__(self, plan: list[WorkerShare], seed: int, rank: int):
        self.plan, self.seed, self.rank = plan, seed, rank

    def __iter__(self):
        w, _ = worker()
        items = [dict(i) for i in self.plan[w].shards]
        if not items or not self.plan[w].batches:
            return
        rng = random.Random(mix_seed(self.seed, self.rank, w, 7))
        while True:
            yield from (dict(i) for i in items)
            rng.shuffle(items)


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
        w, _ = worker()
        rng = random.Random(mix_seed(seed, rank, w, 11))
        if plan is not None:
            src = iter(src)
            yield from wds.shuffle(bufsize, initial=bufsize, rng=rng)(islice(src, plan[w].batches * batch_size))
        yield from wds.shuffle(bufsize, initial=bufsize, rng=rng)(src)
    return stage


def epoch_stage(n_batches: int, plan: list[WorkerShare] | None = None):
    """with_epoch: this worker's share of exactly ``n_batches`` per rank (its quota in ``plan``,
    or an even share)."""
    def stage(src):
        w, n = worker()
        share = plan[w].batches if plan is not None else n_batches // n + (1 if w < n_batches % n else 0)
        yield from islice(src, share)
    return stage


def limit_samples(limit: int, world: int):
    def stage(src):
        _, n = worker()
        yield from islice(src, max(1, math.ceil(limit / (world * n))))
    return stage
