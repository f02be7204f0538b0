"""Evaluation results cached per (model, shard folder): an unchanged pair is not evaluated again.

A cached entry is one model on one setting folder, keyed by

- the model's content: the SHA-256 of a checkpoint / weights file, or of the state_dict a
  weights *name* (``DEFAULT``, ``IMAGENET1K_V1``) resolves to; plus the arch and class count
  given for plain weights;
- the shard folder's content: the SHA-256 of its manifest without the keys that change on
  every rebuild of the same bytes (``pipeline.manifest.VOLATILE``: when and how fast it was
  built), and the name, size and mtime of every selected tar (a tar replaced or edited in
  place behind its manifest's back is evaluated again);
- every evaluation option that can change a row (``--limit``, ``--max-skip``, the device
  type and the precision it resolves to there (fp32 or bf16: an ``auto`` row is cached under
  what auto picked), ... : all of :class:`trainer.config.EvalConfig` but the ones listed in
  ``NOT_IN_KEY``), and ``VERSION``, bumped when the rows' meaning changes.

Entries live in ``eval-cache/`` beside the results file (``EvalConfig.cache_dir`` elsewhere),
one small JSON file each; ``force`` recomputes and rewrites them.  Paths in a cached row
(``checkpoint``, ``weights``, ``shards_dir``) are replaced by the current ones, since the same
bytes may sit elsewhere now.  A setting that lost too many samples has no row and is never
cached: it is evaluated (and fails) again.  Several processes (``torchrun``) do not use the
cache: each rank could see a different file system, and they must agree on what to evaluate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path

from pipeline.atomic import AtomicWriteError, atomic_write_json
from pipeline.bounded import read_json

from .adapt_bn import load_any as load_model
from .models import model_identity

log = logging.getLogger("trainer.eval")

#: bump when what a row means changes (a new score, another skip rule): old entries are then unused
#: (2: rows carry ``selected_on_scored_data``; 3: rows carry ``precision``, the key holds it instead of amp)
VERSION = 3
#: the folder name beside the results file
DIR_NAME = "eval-cache"
#: EvalConfig fields that cannot change a row (what to evaluate, where to write, how fast)
NOT_IN_KEY = frozenset({"shards", "checkpoints", "weights", "arch", "num_classes", "out", "overwrite",
                        "batch_size", "workers", "device", "threads", "progress", "cache", "cache_dir", "force"})


def _no_nan(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


@dataclasses.dataclass
class Summary:
    """What one evaluation reused and computed: (model, setting) pairs; ``folder`` None = cache off."""
    folder: Path | None = None
    force: bool = False
    reused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    computed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        n = len(self.reused) + len(self.computed)
        if self.folder is None:
            return f"evaluated {n} (model, setting) pair(s), no cache"
        return (f"evaluation cache {self.folder}: reused {len(self.reused)} of {n} (model, setting) pair(s), "
                f"evaluated {len(self.computed)}" + (" (--force)" if self.force else ""))


class EvalCache:
    """The cache of one evaluation (``folder`` None: disabled, everything is computed)."""

    def __init__(self, folder: str | os.PathLike | None, options: dict | None = None, force: bool = False,
                 summary: Summary | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.options = {"version": VERSION, **(options or {})}
        self.force = force
        self.summary = summary if summary is not None else Summary()
        self.summary.folder, self.summary.force = self.folder, force
        self._models: dict[tuple, str | None] = {}
        self._loaded: dict[tuple, tuple] = {}

    @classmethod
    def for_config(cls, c, device, world: int = 1, summary: Summary | None = None) -> "EvalCache":
        """The cache an :class:`~trainer.config.EvalConfig` asks for (resolved config)."""
        folder = None
        if getattr(c, "cache", True) and world == 1:
            folder = c.cache_dir or (Path(c.out).parent / DIR_NAME if c.out else None)
        elif world > 1:
            log.info("evaluation cache not used: %d processes", world)
        from .precision import resolve
        options = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in NOT_IN_KEY}
        options.update(precision=resolve(c.precision, device).name, device=getattr(device, "type", str(device)))
        return cls(folder, options, force=getattr(c, "force", False), summary=summary)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    # -- the model side -------------------------------------------------------------------------
    def load(self, source, arch: str | None, num_classes: int | None):
        """``load_model``'s (model, meta); a model already loaded to hash its name is reused."""
        key = (str(source), arch, num_classes)
        return self._loaded.pop(key, None) or load_model(source, arch=arch, num_classes=num_classes)

    def _model_id(self, source, arch, num_classes) -> str | None:
        key = (str(source), arch, num_classes)
        if key not in self._models:
            self._models[key] = self._digest(source, arch, num_classes)
        return self._models[key]

    def _digest(self, source, arch, num_classes) -> str | None:
        identity, loaded = model_identity(source, arch, num_classes)
        if loaded is not None:
            self._loaded[(str(source), arch, num_classes)] = loaded
        return identity

    # -- entries --------------------------------------------------------------------------------
    def _entry(self, model_id: str, arch, num_classes, s) -> tuple[Path, dict]:
        text = json.dumps({"model": model_id, "arch": arch, "num_classes": num_classes, "data": s.identity(),
                           "options": self.options}, sort_keys=True, default=str)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()}.json", json.loads(text)

    def split(self, source, arch: str | None, num_classes: int | None, sets: list) -> tuple[list[dict], list]:
        """(rows reused from the cache, sets still to evaluate) for one model."""
        if not self.enabled or self.force:
            return [], list(sets)
        model_id = self._model_id(source, arch, num_classes)
        if model_id is None:
            return [], list(sets)
        reused, todo = [], []
        for s in sets:
            rows = self._read(*self._entry(model_id, arch, num_classes, s))
            if rows is None:
                todo.append(s)
                continue
            for r in rows:
                r["shards_dir"] = s.folder
                if r.get("checkpoint") is not None:
                    r["checkpoint"] = str(source)
                elif arch is not None:
                    r["weights"] = str(source)
            reused += rows
            self.summary.reused.append((str(source), s.name))
        return reused, todo

    def _read(self, path: Path, key: dict) -> list[dict] | None:
        try:
            doc = read_json(path, "evaluation cache entry")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.warning("%s: unreadable evaluation cache entry, evaluating again (%s)", path, exc)
            return None
        rows = doc.get("rows") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or doc.get("key") != key \
                or not rows or not all(isinstance(r, dict) for r in rows):
            log.warning("%s: evaluation cache entry does not match its name, evaluating again", path)
            return None
        return rows

    def store(self, source, arch: str | None, num_classes: int | None, sets: list, rows: list[dict]) -> None:
        """Record freshly computed rows, one entry per set (sets without rows are not cached)."""
        for s in sets:
            self.summary.computed.append((str(source), s.name))
        if not self.enabled:
            return
        model_id = self._model_id(source, arch, num_classes)
        if model_id is None:
            return
        for s in sets:
            mine = [_no_nan(r) for r in rows if r.get("shards_dir") == s.folder]
            if not mine:
                continue
            path, key = self._entry(model_id, arch, num_classes, s)
            try:
                atomic_write_json(path, {"key": key, "model": str(source), "setting": s.name, "rows": mine},
                                  indent=None)
            except (AtomicWriteError, OSError, TypeError, ValueError) as exc:
                log.warning("evaluation cache: could not record %s on %s (%s)", source, s.name, exc)


def ordered(sets: list, rows: list[dict]) -> list[dict]:
    """Rows in the order of ``sets`` (cached and fresh rows come back separately)."""
    rank = {s.folder: i for i, s in enumerate(sets)}
    return sorted(rows, key=lambda r: rank.get(r.get("shards_dir"), len(rank)))

