"""Teacher-logit cache: g(x) computed once per setting and stored beside the shards.

    python -m trainer.cache_teacher --shards 'shards/train/j2k-200/*.tar' --arch resnet50 --weights DEFAULT

Files, in the setting folder (or under --out/<setting>/):
``teacher-<arch>-<hash>.npy`` (float16 logits, one row per sample, memory-mappable) and
``teacher-<arch>-<hash>.json`` (arch, weights, weights_hash, count, num_classes, setting,
keys in row order).  ``hash`` = sha256 of the teacher's weights (trainer.models.state_dict_hash),
so a cache is only ever used with the exact teacher that made it.  A cache covers every
shard listed in the folder's manifest; it is valid when arch, weights hash and count match.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data import Setting, TeacherCache, group_settings, make_eval_loader
from .engine import amp_context
from .models import build_model, state_dict_hash
from .utils import Dist, atomic_write_text, barrier

log = logging.getLogger(__name__)


def cache_path(setting: Setting, arch: str, weights_hash: str, root: str | os.PathLike | None = None) -> Path:
    base = Path(setting.dir) if root is None else Path(root) / setting.name
    return base / f"teacher-{arch}-{weights_hash}.npy"


def validate(path: str | os.PathLike, setting: Setting, arch: str, weights_hash: str) -> str | None:
    """None when the cache at ``path`` is usable for ``setting``, else the reason."""
    path = Path(path)
    meta_p = path.with_suffix(".json")
    if not path.exists() or not meta_p.exists():
        return "absent"
    try:
        meta = json.loads(meta_p.read_text())
        arr = np.load(path, mmap_mode="r")
    except Exception as exc:  # truncated / corrupt
        return f"unreadable ({exc})"
    if meta.get("arch") != arch:
        return f"arch {meta.get('arch')} != {arch}"
    if meta.get("weights_hash") != weights_hash:
        return f"weights hash {meta.get('weights_hash')} != {weights_hash}"
    want = int(setting.manifest.get("count", setting.count))
    if int(meta.get("count", -1)) != want or arr.shape[0] != want or len(meta.get("keys", [])) != want:
        return f"count {meta.get('count')} (rows {arr.shape[0]}) != manifest count {want}"
    return None


def _all_shards(setting: Setting) -> list[str]:
    names = [e["name"] for e in setting.manifest.get("shards", [])]
    paths = [os.path.join(setting.dir, n) for n in names]
    if names and all(os.path.exists(p) for p in paths):
        return paths
    return setting.shards


@torch.no_grad()
def build_cache(setting: Setting, teacher: torch.nn.Module, arch: str, weights: str | None, path: str | os.PathLike,
                batch_size: int = 64, workers: int = 0, device: torch.device | str = "cpu",
                amp: bool = False, progress: bool = False) -> Path:
    """Run the teacher over every clean crop of the setting; write the cache atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    teacher = teacher.to(device).eval()
    full = Setting(setting.dir, _all_shards(setting), setting.manifest, int(setting.manifest.get("count", setting.count)))
    loader = make_eval_loader([full], batch_size, workers=workers, need_comp=False, need_clean=True)
    keys: list[str] = []
    rows: list[np.ndarray] = []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=full.count, desc=f"teacher {setting.name}", unit="img", leave=False)
    for batch in loader:
        x = batch["clean"].to(device).float().div_(255)
        with torch.no_grad(), amp_context(device, amp):
            out = teacher(x).float()
        rows.append(out.cpu().numpy().astype(np.float16))
        keys.extend(batch["key"])
        if bar is not None:
            bar.update(len(batch["key"]))
    if bar is not None:
        bar.close()
    logits = np.concatenate(rows) if rows else np.zeros((0, 0), np.float16)
    if len(set(keys)) != len(keys):
        raise ValueError(f"{setting.dir}: duplicate sample keys")
    wh = state_dict_hash(teacher)
    meta = {"arch": arch, "weights": weights, "weights_hash": wh, "count": len(keys),
            "num_classes": int(logits.shape[1]) if logits.size else 0, "setting": setting.name,
            "dtype": "float16", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": time.perf_counter() - t0, "keys": keys}
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, logits)
    os.replace(tmp, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
    return path


def _writable(d: str | os.PathLike) -> bool:
    return os.access(d, os.W_OK)


def resolve_caches(settings: list[Setting], teacher: torch.nn.Module, arch: str, weights: str | None,
                   mode: str = "auto", fallback_root: str | os.PathLike | None = None, d: Dist | None = None,
                   batch_size: int = 64, workers: int = 0, device="cpu", amp: bool = False,
                   progress: bool = False) -> dict[str, TeacherCache] | None:
    """setting folder -> TeacherCache, building missing caches (on rank 0) when mode is
    'auto' or a folder; None when mode is 'off'.  mode: auto (beside the shards, or under
    ``fallback_root`` when that folder is read-only) | off | PATH (a .npy file for a single
    setting, or a folder holding <setting>/teacher-*.npy)."""
    if mode in (None, "off", "none"):
        return None
    d = d or Dist()
    wh = state_dict_hash(teacher)
    out: dict[str, TeacherCache] = {}
    for s in settings:
        if mode == "auto":
            p = cache_path(s, arch, wh)
            if not _writable(s.dir) and validate(p, s, arch, wh) is not None and fallback_root is not None:
                p = cache_path(s, arch, wh, fallback_root)
        elif str(mode).endswith(".npy"):
            if len(settings) != 1:
                raise ValueError("--teacher-cache FILE.npy needs exactly one training setting; give a folder")
            p = Path(mode)
        else:
            p = cache_path(s, arch, wh, mode)
        reason = validate(p, s, arch, wh)
        if reason is not None:
            if d.main:
                log.info("teacher cache %s: %s; building it", p, reason)
                build_cache(s, teacher, arch, weights, p, batch_size, workers, device, amp, progress)
            barrier(d)
            reason = validate(p, s, arch, wh)
            if reason is not None:
                raise RuntimeError(f"teacher cache {p} is not valid after building: {reason}")
        out[os.path.abspath(s.dir)] = TeacherCache(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.cache_teacher", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", nargs="+", required=True, help="shard globs/brace patterns (grouped by folder)")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--weights", default=None, help="torchvision weights name, or a weights/checkpoint file")
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--out", default=None, help="write caches under OUT/<setting>/ instead of beside the shards")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--force", action="store_true", help="rebuild even when a valid cache exists")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device("cuda" if (a.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if a.device == "auto" else a.device))
    settings = group_settings(a.shards)
    n = a.num_classes or settings[0].num_classes
    teacher = build_model(a.arch, a.weights, n).to(device).eval().requires_grad_(False)
    wh = state_dict_hash(teacher)
    for s in settings:
        p = cache_path(s, a.arch, wh, a.out)
        reason = "forced" if a.force else validate(p, s, a.arch, wh)
        if reason is None:
            print(f"{p}: valid, kept")
            continue
        t0 = time.perf_counter()
        build_cache(s, teacher, a.arch, a.weights, p, a.batch_size, a.workers, device, device.type == "cuda",
                    not a.no_progress)
        print(f"{p}: {s.manifest.get('count')} logits ({reason}; {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
