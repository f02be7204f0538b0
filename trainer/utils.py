"""Distributed setup, atomic saves, seeding, shard-pattern expansion."""
from __future__ import annotations

import glob
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


# -- distributed -----------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> Dist:
    """Initialise torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK);
    NCCL on CUDA, gloo on CPU.  Without those variables: a single process."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return Dist(0, 1, 0, torch.device(device))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, dev)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


# -- seeding ---------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, worker...)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & (2**64 - 1)
    return h & (2**63 - 1)


# -- atomic writes ---------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# -- shard patterns --------------------------------------------------------------------------
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """'a/{x,y}/s-{000..002}.tar' -> the concrete patterns (comma lists and numeric ranges,
    zero padding kept), in order."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        a, b = r.group(1), r.group(2)
        width = len(a) if a.startswith("0") else 0
        opts = [str(i).zfill(width) for i in range(int(a), int(b) + 1)]
    else:
        opts = body.split(",")
    out = []
    for o in opts:
        out.extend(expand_braces(pattern[: m.start()] + o + pattern[m.end():]))
    return out


def expand_shards(patterns: str | list[str]) -> list[str]:
    """Globs / brace patterns / files / folders -> sorted unique .tar paths (a folder means
    its *.tar).  Raises when nothing matches."""
    if isinstance(patterns, str):
        patterns = [patterns]
    found: list[str] = []
    for pat in patterns:
        for p in expand_braces(str(pat)):
            if os.path.isdir(p):
                found.extend(glob.glob(os.path.join(p, "*.tar")))
            elif any(c in p for c in "*?["):
                found.extend(glob.glob(p))
            elif os.path.exists(p):
                found.append(p)
            else:
                raise FileNotFoundError(f"shard {p} does not exist")
    found = sorted(set(os.path.abspath(f) for f in found if f.endswith(".tar")))
    if not found:
        raise FileNotFoundError(f"no .tar shards match {patterns}")
    return found


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
