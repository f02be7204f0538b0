"""The teacher-logit cache: g(x) computed once per set of clean crops, stored beside the
shards, looked up by sample key while training.  This module owns its format, building and
lookup.

    python -m trainer.teacher_cache --shards 'shards/train/j2k-200/*.tar' --arch resnet50 --weights DEFAULT

Which clean crops: a pair-layout setting carries its own, so its cache lives in its folder.
A split-layout setting's clean crops are its reference's (``OUT/<split>/lossless``), the
same for every split-layout setting of the split: their cache is the reference's, built
once and shared by all of them (and by the ``lossless`` setting itself).  It is keyed by
the reference folder, its ``plan_id`` and its shards' identity
(:meth:`trainer.data.ShardSet.identity`), the arch and the weights.

Files, in that folder (or under ``--out/<setting>/``): ``teacher-<arch>-<hash>-<precision>.npy``
(float16 logits, one row per sample, memory-mappable) and the same name in ``.json`` (arch,
weights, weights_hash, precision, count, skipped, num_classes, setting, plan_id, identity,
keys in row order).  ``hash`` = sha256 of the teacher's weights
(``trainer.models.state_dict_hash``), so a cache is only ever used with the exact teacher
that made it; ``precision`` (fp32 or bf16, ``trainer.precision``) is the one the teacher ran
in, which is the student's: a run in bf16 uses (or builds) the bf16 cache and never reads
logits computed in fp32, and the other way round.  A cache covers every shard the folder's
manifest lists; it is valid when arch, weights hash, precision and count (+ the samples
skipped while building it) match the manifest, and so do the plan and the shards' identity.
A cache written before the precision was recorded (no ``-<precision>`` in its name) is not
read: the run builds the cache of its precision beside it.

Every path is built from the user's shard folder or ``--out``, the setting name of a
checked manifest (``pipeline.manifest.Manifest``: never a path separator) and a checked
arch name, so a hostile manifest cannot make the cache write anywhere else.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from pipeline.atomic import atomic_output, atomic_write_json
from pipeline.bounded import read_json
from pipeline.limits import check_regular

from .clitools import UserError, run_click
from .data import ShardSet, check_skips, folder_key, group_shards, make_eval_loader
from .distributed import Dist, barrier, resolve_device
from .loop import Skips
from .methods import to_input
from .config import TeacherCacheConfig
from .models import build_model, state_dict_hash
from .options import click_options
from .precision import Precision, fp32, resolve as resolve_precision

log = logging.getLogger(__name__)

FORMAT = "teacher-logits-1"
_ARCH = re.compile(r"[A-Za-z0-9_]+")


class CacheError(UserError, ValueError):
    """A teacher cache that cannot be used or built (the message names the file)."""


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
            self._meta = read_json(self.meta_path, "teacher cache description")
        return self._meta

    def _open(self):
        if self._logits is None:
            check_regular(self.npy, "teacher cache")      # np.load would wait on a FIFO
            self._logits = np.load(self.npy, mmap_mode="r", allow_pickle=False)
            self._index = {k: i for i, k in enumerate(self.meta["keys"])}

    def __len__(self) -> int:
        return int(self.meta["count"])

    def lookup(self, key: str) -> np.ndarray:
        self._open()
        try:
            return np.asarray(self._logits[self._index[key]])
        except KeyError:
            raise KeyError(f"sample {key!r} is not in the teacher cache {self.npy} (skipped when it was "
                           "built, or the cache is stale: rebuild it with python -m trainer.teacher_cache --force)"
                           ) from None

    def __getstate__(self):
        # workers re-open the files lazily (the key list can be large: don't pickle it)
        return {"npy": self.npy, "meta_path": self.meta_path, "_logits": None, "_index": None, "_meta": None}


def cache_target(shards: ShardSet) -> ShardSet:
    """The shards whose clean crops a cache for ``shards`` covers: the setting itself (pair
    layout), or its reference (split layout)."""
    return shards.reference if shards.reference is not None else shards


def cache_path(shards: ShardSet, arch: str, weights_hash: str, root: str | os.PathLike | None = None,
               precision: str = "fp32") -> Path:
    """Where the cache of ``shards`` for this teacher in this precision (fp32 | bf16) lives:
    beside the clean crops (the setting's folder, or its reference's), or under
    ``root/<that folder's setting>/``."""
    if not _ARCH.fullmatch(arch or "") or not re.fullmatch(r"[0-9a-f]+", weights_hash) \
            or not _ARCH.fullmatch(str(precision)):
        raise CacheError(f"cannot name a teacher cache after arch {arch!r}, hash {weights_hash!r} and precision "
                         f"{precision!r}")
    shards = cache_target(shards)
    base = Path(shards.folder) if root is None else Path(root) / shards.setting.name
    return base / f"teacher-{arch}-{weights_hash}-{precision}.npy"


def validate(path: str | os.PathLike, shards: ShardSet, arch: str, weights_hash: str,
             precision: str = "fp32") -> str | None:
    """None when the cache at ``path`` is usable for ``shards`` by a run in ``precision``,
    else the reason."""
    shards = cache_target(shards)
    path = Path(path)
    meta_p = path.with_suffix(".json")
    if not path.exists() or not meta_p.exists():
        return "absent"
    try:
        meta = read_json(meta_p, "teacher cache description")
        check_regular(path, "teacher cache")
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated / corrupt
        return f"unreadable ({type(exc).__name__})"
    if not isinstance(meta, dict):
        return "unreadable (meta is not an object)"
    if meta.get("arch") != arch:
        return f"arch {meta.get('arch')} != {arch}"
    if meta.get("weights_hash") != weights_hash:
        return f"weights hash {meta.get('weights_hash')} != {weights_hash}"
    if meta.get("precision") != str(precision):
        return (f"computed in {meta.get('precision') or 'an unrecorded precision'}, this run is {precision}")
    want = int(shards.manifest["count"])
    count, skipped = meta.get("count"), meta.get("skipped", 0)
    if not isinstance(count, int) or not isinstance(skipped, int) or count + skipped != want:
        return f"count {count} + skipped {skipped} != manifest count {want}"
    if arr.shape[0] != count or len(meta.get("keys", [])) != count:
        return f"{arr.shape[0]} rows for {count} keys"
    plan = shards.manifest.get("plan_id")
    if plan is not None and meta.get("plan_id", plan) != plan:
        return f"built for plan {meta.get('plan_id')}, the shards are of plan {plan}"
    if meta.get("identity") != _whole(shards).identity():
        return "built from other shards, or the shards changed since"
    return None


def _whole(shards: ShardSet) -> ShardSet:
    """Every shard the manifest lists (a cache covers the whole setting)."""
    names = list(shards.manifest.shard_counts)
    paths = [os.path.join(shards.folder, n) for n in names]
    if not (names and all(os.path.isfile(p) for p in paths)):
        paths = shards.shards
    return ShardSet(shards.folder, paths, shards.manifest, shards.manifest.count)


@torch.no_grad()
def build_cache(shards: ShardSet, teacher: torch.nn.Module, arch: str, weights: str | None,
                path: str | os.PathLike, batch_size: int = 64, workers: int = 0,
                device: torch.device | str = "cpu", precision: Precision | None = None, progress: bool = False,
                max_skip: float = 0.01) -> Path:
    """Run the teacher over every clean crop of the setting (of its reference, in split
    layout) in ``precision`` (default fp32); write the cache atomically."""
    shards = cache_target(shards)
    path = Path(path)
    device = torch.device(device)
    prec = precision if precision is not None else fp32(device)
    teacher = prec.prepare(teacher.to(device).eval())
    full = _whole(shards)
    loader = make_eval_loader([full], batch_size, workers=workers, need_comp=False, need_clean=True)
    keys: list[str] = []
    rows: list[np.ndarray] = []
    skips = Skips()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=full.count, desc=f"teacher {shards.name}", unit="img", leave=False)
    for batch in loader:
        skips.add(batch)
        if batch["label"].numel() == 0:
            continue
        x = to_input(batch["clean"], device, prec.channels_last)
        with prec.autocast():
            out = teacher(x).float()
        rows.append(out.cpu().numpy().astype(np.float16))
        keys.extend(batch["key"])
        if bar is not None:
            bar.update(len(batch["key"]))
    if bar is not None:
        bar.close()
    check_skips(skips.count, len(keys), max_skip, f"teacher cache of {shards.folder}", skips.reasons)
    logits = np.concatenate(rows) if rows else np.zeros((0, 0), np.float16)
    if len(set(keys)) != len(keys):
        raise CacheError(f"{shards.folder}: duplicate sample keys")
    missing = full.count - len(keys) - skips.count
    meta = {"format": FORMAT, "arch": arch, "weights": None if weights is None else str(weights),
            "weights_hash": state_dict_hash(teacher), "precision": prec.name, "count": len(keys),
            "skipped": full.count - len(keys),
            "skip_reasons": skips.reasons + ([f"{missing} sample(s) missing against the manifest"] if missing > 0 else []),
            "num_classes": int(logits.shape[1]) if logits.size else 0, "setting": shards.name,
            "plan_id": shards.manifest.get("plan_id"), "identity": full.identity(),
            "dtype": "float16", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": time.perf_counter() - t0, "keys": keys}
    with atomic_output(path, "wb") as f:
        np.save(f, logits, allow_pickle=False)
    atomic_write_json(path.with_suffix(".json"), meta, indent=None)
    return path


def resolve_caches(sets: list[ShardSet], teacher: torch.nn.Module, arch: str, weights: str | None,
                   mode: str = "auto", fallback_root: str | os.PathLike | None = None, d: Dist | None = None,
                   batch_size: int = 64, workers: int = 0, device="cpu", precision: Precision | None = None,
                   progress: bool = False, max_skip: float = 0.01) -> dict[str, TeacherCache] | None:
    """setting folder -> TeacherCache, building missing caches (on rank 0) when mode is
    'auto' or a folder; None when mode is 'off'.  mode: auto (beside the clean crops, or under
    ``fallback_root`` when that folder is read-only) | off | PATH (a .npy file for the clean
    crops of the settings, or a folder holding <setting>/teacher-*.npy).  Split-layout
    settings of one split share their reference's cache: it is built once, and their folders
    and the reference's all map to it.  The caches are those of ``precision`` (the training
    run's; default fp32): auto and a folder build the cache of that precision beside one of
    another; a FILE.npy computed in another precision is refused (CacheError), not overwritten."""
    if mode in (None, "off", "none"):
        return None
    d = d or Dist()
    prec = precision if precision is not None else fp32(device)
    wh = state_dict_hash(teacher)
    out: dict[str, TeacherCache] = {}
    built: dict[str, TeacherCache] = {}        # target folder -> its cache
    targets = {folder_key(cache_target(s).folder) for s in sets}
    for s in sets:
        target = cache_target(s)
        key = folder_key(target.folder)
        if key not in built:
            if mode == "auto":
                p = cache_path(s, arch, wh, precision=prec.name)
                if not os.access(target.folder, os.W_OK) and validate(p, s, arch, wh, prec.name) is not None \
                        and fallback_root is not None:
                    p = cache_path(s, arch, wh, fallback_root, prec.name)
            elif str(mode).endswith(".npy"):
                if len(targets) != 1:
                    raise CacheError("--teacher-cache FILE.npy needs the settings of one set of clean crops (one "
                                     "pair-layout setting, or split-layout settings of one reference); give a folder")
                p = Path(mode)
                _check_file_precision(p, prec.name)
            else:
                p = cache_path(s, arch, wh, mode, prec.name)
            reason = validate(p, s, arch, wh, prec.name)
            if reason is not None:
                if d.main:
                    log.info("teacher cache %s: %s; building it", p, reason)
                    build_cache(s, teacher, arch, weights, p, batch_size, workers, device, prec, progress, max_skip)
                barrier(d)
                reason = validate(p, s, arch, wh, prec.name)
                if reason is not None:
                    raise CacheError(f"teacher cache {p} is not valid after building: {reason}")
            built[key] = TeacherCache(p)
        out[folder_key(s.folder)] = built[key]
        out[key] = built[key]    # stability training reads the reference's shards themselves
    return out


def _check_file_precision(path: Path, precision: str) -> None:
    """A cache file the user named, computed in another precision than the run's: refused."""
    try:
        had = read_json(path.with_suffix(".json"), "teacher cache description").get("precision")
    except (OSError, ValueError, AttributeError):
        return        # absent or unreadable: validate() says why, and it is built
    if had is not None and had != precision:
        raise CacheError(f"--teacher-cache {path}: computed in {had}, this run is {precision} (give --precision "
                         f"{had}, or another file: a cache is only read in the precision that made it)")


# -- command line -------------------------------------------------------------------------------
@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(TeacherCacheConfig)
def cli(**params):
    """Compute the teacher's logits on every clean crop of each setting, once."""
    c = TeacherCacheConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}).resolved()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dev = torch.device(resolve_device(c.device))
    prec = resolve_precision(c.precision, dev)
    log.info("%s", prec.describe())
    sets = group_shards(c.shards)
    n = c.num_classes or sets[0].num_classes
    teacher = build_model(c.arch, c.weights, n).to(dev).eval().requires_grad_(False)
    wh = state_dict_hash(teacher)
    done: set[Path] = set()
    for s in sets:
        p = cache_path(s, c.arch, wh, c.out, prec.name)
        if p in done:     # split-layout settings of one reference share its cache
            click.echo(f"{p}: shared with the other settings of {cache_target(s).folder}")
            continue
        done.add(p)
        reason = "forced" if c.force else validate(p, s, c.arch, wh, prec.name)
        if reason is None:
            click.echo(f"{p}: valid, kept")
            continue
        t0 = time.perf_counter()
        build_cache(s, teacher, c.arch, c.weights, p, c.batch_size, c.workers, dev, prec, c.progress, c.max_skip)
        click.echo(f"{p}: {cache_target(s).manifest['count']} logits ({reason}; {time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_click(cli, argv, "python -m trainer.teacher_cache", multi=("--shards",))


if __name__ == "__main__":
    sys.exit(main())
