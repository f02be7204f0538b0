"""The process's place in a run: rank, world size and device (torchrun's environment), and
the seeds derived from them."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from .clitools import UserError


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


class DeviceError(UserError, ValueError):
    """A --device that is not a device of this machine (one line, names it)."""


#: the device types a run may ask for; anything else is refused before torch sees it
DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str | None) -> str:
    """``auto`` (or None) -> ``cuda`` when a GPU is visible, else ``cpu``; an explicit device
    is checked: a known type (``cpu``, ``cuda``, ``cuda:N``), and a GPU that is there."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):
        raise DeviceError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise DeviceError(f"--device {device[:40]!r}: choose auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: no CUDA GPU is visible on this machine (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def init_distributed(device: str | None = None) -> Dist:
    """Initialise torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK);
    NCCL on CUDA, gloo on CPU.  Without those variables: a single process."""
    device = resolve_device(device)
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
