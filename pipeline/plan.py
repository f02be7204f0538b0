"""The plan of a split: which source image goes to which shard, in which order.

Order.  ``mixed`` (the default) puts the sorted listing in a seeded pseudo-random order:
item i's place is the SHA-256 of ``"<seed>\\t<rel>"``.  A class-sorted order would give
shards of one or two classes, and then batches of a few classes whatever the loader's
shuffle buffer (train-mode batch norm and the gradient are both wrong).  The permutation
depends only on the seed and the set of files: not on the listing order, the machine, the
Python or NumPy version, and adding one file moves no other file's relative order.
``sorted`` keeps the listing order (class by class).  ``--limit N`` keeps the first N
items of that order: a random subset under ``mixed``.

Every setting of a split built with the same source, order, seed, shard size and limit has
the same plan (:func:`plan_id`), so shard i of every setting holds the same keys in the
same order, which is what pairs a split-layout setting with its reference.

A shard's plan hash covers its items (paths, labels, keys, sizes, modification times),
the setting's codec parameters, the layout and the format version: a re-run redoes exactly
the shards whose hash changed (a replaced or repaired image included) and keeps the rest.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .sources import Item, Source

ORDERS = ("mixed", "sorted")
DEFAULT_ORDER = "mixed"
DEFAULT_SEED = 0


def order_items(items: list[Item], order: str = DEFAULT_ORDER, seed: int = DEFAULT_SEED) -> list[Item]:
    if order == "sorted":
        return list(items)
    if order != "mixed":
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    return sorted(items, key=lambda it: (hashlib.sha256(f"{seed}\t{it.rel}".encode()).digest(), it.rel))


def source_plan(items: list[Item]) -> str:
    """Hash of a shard's items: what must be in it, and from which file versions."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.fingerprint().encode() + b"\n")
    return h.hexdigest()[:20]


def shard_plan(format_version: int, codec_name: str, params: dict, layout: str, source_hash: str) -> str:
    """Hash of everything that determines one shard's bytes."""
    head = json.dumps({"format": format_version, "codec": codec_name, "params": params, "layout": layout},
                      sort_keys=True)
    return hashlib.sha256(f"{head}\n{source_hash}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class SplitPlan:
    """The order and the cut of one split: the same for every setting built from it."""
    split: str
    order: str
    seed: int
    shard_size: int
    limit: int | None
    source_digest: str
    shards: list[list[Item]]

    @property
    def identity(self) -> dict:
        return {"split": self.split, "order": self.order, "seed": self.seed, "shard_size": self.shard_size,
                "limit": self.limit, "source_digest": self.source_digest}

    @property
    def plan_id(self) -> str:
        return plan_id(self.identity)

    def shard_sources(self) -> list[str]:
        return [source_plan(items) for items in self.shards]


def plan_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def make_plan(source: Source, split: str, order: str = DEFAULT_ORDER, seed: int = DEFAULT_SEED,
              shard_size: int = 1000, limit: int | None = None) -> SplitPlan:
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard size must be a whole number >= 1, got {shard_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    items = order_items(source.items, order, seed)
    if limit:
        items = items[:limit]
    shards = [items[s:s + shard_size] for s in range(0, len(items), shard_size)]
    return SplitPlan(split, order, seed, shard_size, limit, source.digest(), shards)


def owner(index: int, num_nodes: int) -> int:
    """The node rank that builds shard ``index`` (round robin: every rank gets a fair share
    of every part of the permutation)."""
    return index % num_nodes
