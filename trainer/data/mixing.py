"""Several settings in one run (a generalist): which settings, in what shares, and how the
samples of a batch are drawn from them.

Each loader worker keeps one stream of samples per setting (its shards of that setting, read
again when they run out) and draws the setting of every sample from a generator seeded by
(seed, epoch, rank, worker) with the asked weights: every batch mixes the settings, and an
epoch's shares follow the weights up to the draw's noise, whatever the shard order.  The
weights, the settings' compatibility (one label space, one split) and the realised shares
are this module's.
"""
from __future__ import annotations

import math
import random

from torch.utils.data import IterableDataset

from ..clitools import UserError
from ..distributed import mix_seed
from .plan import WorkerShare, apportion, worker
from .shardsets import ShardSet


class MixError(UserError, ValueError):
    """Settings that cannot be trained on together, or bad --setting-weights (one line)."""


def parse_weights(value) -> dict[str, float] | None:
    """``"lossless=1,jpeg-10=2"`` (or a mapping) -> {setting: weight}; None when not given."""
    if value in (None, "", {}):
        return None
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        pairs = []
        for part in str(value).replace(" ", "").split(","):
            if not part:
                continue
            name, eq, w = part.partition("=")
            if not eq or not name:
                raise MixError(f"--setting-weights {value!r}: expected SETTING=WEIGHT,... (got {part!r})")
            pairs.append((name, w))
    out: dict[str, float] = {}
    for name, w in pairs:
        try:
            f = float(w)
        except (TypeError, ValueError):
            raise MixError(f"--setting-weights: {name}={w!r} is not a number") from None
        if not math.isfinite(f) or f < 0:
            raise MixError(f"--setting-weights: {name}={w}: a weight must be a finite number >= 0")
        if name in out:
            raise MixError(f"--setting-weights: {name} given twice")
        out[name] = f
    if not math.isfinite(sum(out.values())):     # 1e308 twice: the shares would be NaN
        raise MixError(f"--setting-weights: the weights sum to more than a float holds "
                       f"({', '.join(f'{k}={v:g}' for k, v in out.items())}); only their ratios matter: "
                       "give smaller numbers")
    return out


def setting_weights(sets: list[ShardSet], asked: dict[str, float] | None) -> list[float]:
    """One weight per setting of ``sets`` (1.0 each unless asked); one-line errors for a
    setting not among the shards and for weights that are all zero."""
    names = [s.name for s in sets]
    if asked is None:
        return [1.0] * len(sets)
    unknown = sorted(set(asked) - set(names))
    if unknown:
        raise MixError(f"--setting-weights: {', '.join(unknown)} not among the training shards' settings "
                       f"({', '.join(names)})")
    weights = [float(asked.get(n, 1.0)) for n in names]
    if not any(w > 0 for w in weights):
        raise MixError("--setting-weights: every weight is zero; at least one setting needs a weight > 0")
    return weights


def check_mixable(sets: list[ShardSet]) -> None:
    """One run trains one label space on one split: settings whose manifests disagree on the
    class count, the classes or the split are refused (one line naming two of them)."""
    if len(sets) < 2:
        return
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MixError(f"--shards: setting {', '.join(dup)} given from several folders; give each setting once")
    first = sets[0]
    for s in sets[1:]:
        for what, get in (("class count", lambda m: m.num_classes), ("classes", lambda m: m.get("class_index")),
                          ("split", lambda m: m.split)):
            a, b = get(first.manifest), get(s.manifest)
            if a != b:
                shown = (a, b) if what != "classes" else (f"{len(a or {})} classes", f"{len(b or {})} classes")
                if what == "classes" and shown[0] == shown[1]:
                    shown = ("one label space", "another")
                raise MixError(f"--shards: {first.name} and {s.name} differ in {what} ({shown[0]} vs {shown[1]}); "
                               "one run trains on one label space and one split")


def mixed_plan(groups: list[list[dict]], expected: dict[str, int], n_batches: int, *, seed: int, rank: int = 0,
               world: int = 1, workers: int = 1) -> list[WorkerShare]:
    """The epoch plan of a mixed run: each setting's shards are permuted with a seed all ranks
    share and dealt to the (rank, worker) slots, so that every worker reads every setting; a
    setting with fewer shards than slots gives each slot one of its shards in turn (slots then
    share a shard).  The rank's ``n_batches`` are shared evenly among its workers."""
    slots = world * max(1, workers)
    n = max(1, workers)
    per: list[list[list[dict]]] = []
    for g in groups:
        order = list(g)
        random.Random(seed).shuffle(order)
        mine = []
        for w in range(n):
            j = rank * n + w
            mine.append(order[j::slots] if len(order) >= slots else ([order[j % len(order)]] if order else []))
        per.append(mine)
    quotas = apportion(n_batches, [1] * n)
    out = []
    for w in range(n):
        mine = [g[w] for g in per]
        items = [i for g in mine for i in g]
        out.append(WorkerShare(items, sum(expected.get(i["url"], 0) for i in items), quotas[w], tuple(mine)))
    return out


class MixedSamples(IterableDataset):
    """Stage 0 of a mixed epoch: this worker's samples, the setting of each drawn by weight
    (a (seed, rank, worker) generator); each setting's shards are read in turn and again
    (reshuffled) when they run out.  ``read`` turns a stream of shard items into samples
    (:func:`trainer.data.samples.tar_samples`)."""

    def __init__(self, plan: list[WorkerShare], weights: list[float], names: list[str], seed: int, rank: int,
                 read):
        self.plan, self.weights, self.names = plan, list(weights), list(names)
        self.seed, self.rank, self.read = seed, rank, read

    def __iter__(self):
        w, _ = worker()
        share = self.plan[w]
        if not share.batches:
            return
        streams, weights = [], []
        for i, items in enumerate(share.by_setting):
            live = bool(items) and self.weights[i] > 0
            weights.append(self.weights[i] if live else 0.0)
            rng = random.Random(mix_seed(self.seed, self.rank, w, 17, i))
            streams.append(iter(self.read(_cycle(items, rng))) if live else iter(()))
        if not any(weights):
            return
        yield from mix_stage(streams, weights, mix_seed(self.seed, self.rank, w, 13), self.names)


def mix_stage(streams: list, weights: list[float], seed: int, names: list[str]):
    """Samples drawn from ``streams`` (one iterator of samples per setting) by weight, with a
    generator seeded by ``seed``; each carries its setting's name (``__setting__``).  Ends
    when a drawn stream ends (its shards are all unreadable)."""
    rng = random.Random(seed)
    population = range(len(weights))
    while True:
        i = rng.choices(population, weights=weights, k=1)[0]
        sample = next(streams[i], None)
        if sample is None:
            return
        sample["__setting__"] = names[i]
        yield sample


def _cycle(items: list[dict], rng: random.Random):
    items = [dict(i) for i in items]
    while True:
        yield from (dict(i) for i in items)
        rng.shuffle(items)


def shares(counts: dict[str, float]) -> dict[str, float]:
    """{setting: count} -> {setting: percent of the total}."""
    total = sum(counts.values())
    return {k: (100.0 * v / total if total else 0.0) for k, v in counts.items()}


def asked_shares(names: list[str], weights: list[float]) -> dict[str, float]:
    return shares(dict(zip(names, weights)))


__all__ = ["MixError", "MixedSamples", "asked_shares", "check_mixable", "mix_stage", "mixed_plan", "parse_weights",
           "setting_weights", "shares"]
