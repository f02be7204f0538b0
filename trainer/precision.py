"""The numeric precision a model runs in: one option, ``--precision auto|fp32|bf16``, decided
once per command by :func:`resolve` and carried as a :class:`Precision` to every forward pass
(training, the teacher, evaluation, the teacher cache, the receiver).

- ``fp32``: float32 throughout; channels_last on CUDA only (cuDNN's fast layout; on a CPU
  the NCHW layout every run used before this option existed);
- ``bf16``: bf16 autocast (the matrix products and convolutions in bfloat16, the rest in
  float32) and channels_last; only on a device that runs bf16 natively, else one line
  ``error: ...`` naming the device (exit status 2): nothing falls back behind the user's back;
- ``auto`` (the default): bf16 where the device runs it natively (a CUDA GPU that supports it,
  a CPU that reports AVX-512 BF16 or AMX-BF16), fp32 elsewhere.

Losses are computed in float32 whatever the precision (``trainer.losses`` casts the logits).
A run records the precision it resolved to in args.yaml / args.json and in its checkpoints;
evaluation rows carry it in their ``precision`` column, and it is part of the evaluation
cache's key and of the teacher cache's name.

Whether the CPU runs bf16 natively is read from its flags (:func:`cpu_flags`: /proc/cpuinfo,
else torch's own probes), so that tests can fake any CPU.  Importing this module does not
import torch (the commands' ``--help`` and option checks stay light).
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pipeline.registry import Registry

from .clitools import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("trainer.precision")

AUTO = "auto"
#: the values of ``--precision``
CHOICES = (AUTO, "fp32", "bf16")
#: the CPU flags (/proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 and AMX-BF16 (x86-64)
#: and the Armv8.6 BF16 extension (aarch64's "Features" line)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: the config keys the option replaces (old args.yaml files and checkpoints hold them)
LEGACY_KEYS = ("amp", "channels_last")
#: the option's help, wherever it is offered
HELP = ("auto: bf16 autocast + channels_last where the device runs bf16 natively (a CUDA GPU that supports it; a "
        "CPU reporting AVX-512 BF16 or AMX), fp32 elsewhere | fp32 | bf16 (an error where the device has no native "
        "bf16).")


class PrecisionError(UserError, ValueError):
    """A precision this device cannot run, or an unknown one: a usage error (exit status 2)."""
    exit_code = 2


# -- what the hardware offers ---------------------------------------------------------------------
def parse_flags(cpuinfo: str) -> frozenset[str] | None:
    """The first ``flags`` (x86) or ``Features`` (Arm) line of a /proc/cpuinfo text; None when
    there is none."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo's ``flags`` (x86) or ``Features`` (Arm) line;
    where there is none (macOS, Windows) the bf16 flags torch's own probes confirm."""
    import torch

    try:
        flags = parse_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        flags = None
    if flags is not None:
        return flags
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def cpu_bf16() -> tuple[bool, str]:
    """(does the CPU run bf16 natively, the evidence in words)."""
    found = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
    if found:
        return True, f"the CPU reports {', '.join(found)}"
    return False, f"the CPU reports none of {', '.join(CPU_BF16_FLAGS)}"


def cpu_words() -> str:
    """The CPU as results files name it: its model, its bf16 flags and its cores."""
    import os

    from pipeline.provenance import cpu_model

    flags = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
    return f"{cpu_model()} ({', '.join(flags) or 'no bf16 flags'}), {os.cpu_count()} cores"


def cuda_bf16() -> tuple[bool, str]:
    """(does the visible CUDA GPU run bf16 natively, the evidence in words)."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible"
    name = torch.cuda.get_device_name()
    try:
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:      # older torch: no emulation to leave out
        ok = torch.cuda.is_bf16_supported()
    return bool(ok), f"{name} {'supports' if ok else 'does not support'} bf16"


#: device type -> its bf16 probe (looked up at call time, so that tests can replace a probe)
BF16_PROBES: dict[str, Callable[[], tuple[bool, str]]] = {"cpu": lambda: cpu_bf16(), "cuda": lambda: cuda_bf16()}


def native_bf16(device_type: str) -> tuple[bool, str]:
    probe = BF16_PROBES.get(device_type)
    return probe() if probe is not None else (False, f"bf16 is not offered on {device_type}")


# -- the kinds ------------------------------------------------------------------------------------
class Kind:
    """One numeric precision: the autocast dtype (a ``torch`` attribute name; None: no
    autocast) and the memory layout it runs in."""
    name: ClassVar[str]
    dtype: ClassVar[str | None] = None
    needs_native_bf16: ClassVar[bool] = False

    @staticmethod
    def channels_last(device_type: str) -> bool:
        return True


REGISTRY: Registry[type[Kind]] = Registry("precision", PrecisionError)


@REGISTRY.register
class FP32(Kind):
    name = "fp32"

    @staticmethod
    def channels_last(device_type: str) -> bool:
        # cuDNN's fastest fp32 kernels want it; on a CPU fp32 keeps the NCHW layout of every
        # earlier run, so that an fp32 run repeats them
        return device_type == "cuda"


@REGISTRY.register
class BF16(Kind):
    name = "bf16"
    dtype = "bfloat16"
    needs_native_bf16 = True


#: what ``auto`` picks, by whether the device runs bf16 natively
AUTO_PICKS = {True: BF16.name, False: FP32.name}


@dataclass(frozen=True)
class Precision:
    """A resolved precision on one device type (what :func:`resolve` returns)."""
    name: str                  # fp32 | bf16
    device_type: str = "cpu"
    channels_last: bool = False
    choice: str = AUTO         # what was asked: auto | fp32 | bf16
    reason: str = ""           # why the device does (not) run bf16 natively

    @property
    def dtype(self) -> "torch.dtype | None":
        """The autocast dtype (None: fp32, no autocast)."""
        import torch

        name = REGISTRY.get(self.name).dtype
        return getattr(torch, name) if name else None

    def autocast(self):
        """The context the forward passes run in."""
        import torch

        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def memory_format(self) -> "torch.memory_format":
        import torch

        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, model: "torch.nn.Module") -> "torch.nn.Module":
        """The model in this precision's memory layout (its weights stay float32: autocast casts
        them per operation, and the optimiser updates float32 weights)."""
        return model.to(memory_format=self.memory_format) if self.channels_last else model

    def layout(self, x: "torch.Tensor") -> "torch.Tensor":
        """An input batch in this precision's memory layout."""
        return x.contiguous(memory_format=self.memory_format)

    def describe(self) -> str:
        """The start-up line: what runs, and why."""
        how = f"{self.name} autocast" if REGISTRY.get(self.name).dtype else "float32"
        how += ", channels_last" if self.channels_last else ", NCHW"
        asked = f"--precision {self.choice}" + (f": {self.reason}" if self.choice == AUTO and self.reason else "")
        return f"precision {self.name} on {self.device_type} ({how}; {asked})"

    def __str__(self) -> str:
        return self.name


def fp32(device: "torch.device | str" = "cpu") -> Precision:
    """float32 on ``device`` (what code that asks for nothing gets)."""
    return resolve("fp32", device)


def resolve(choice: str | Precision, device: "torch.device | str") -> Precision:
    """The precision ``choice`` (auto | fp32 | bf16) means on ``device``; PrecisionError (one
    line naming the device) for bf16 on a device without native bf16, or an unknown choice."""
    import torch

    device = torch.device(device)
    if isinstance(choice, Precision):
        if choice.device_type == device.type:
            return choice
        choice = choice.choice
    if choice not in CHOICES:
        raise PrecisionError(f"--precision {str(choice)[:40]!r}: choose from {', '.join(CHOICES)}")
    native, reason = native_bf16(device.type)
    name = AUTO_PICKS[native] if choice == AUTO else choice
    kind = REGISTRY.get(name)
    if kind.needs_native_bf16 and not native:
        raise PrecisionError(f"--precision {name}: device {device} has no native bf16 ({reason}); "
                             "use --precision auto or fp32")
    return Precision(name, device.type, kind.channels_last(device.type), choice, reason)


def click_option(envvar: str | None = None):
    """``--precision`` for a click command outside the trainer's configs (the receiver, the
    demo, the experiments): the same choices, default and help."""
    import click

    return click.option("--precision", envvar=envvar, type=click.Choice(CHOICES), default=AUTO, show_default=True,
                        help=HELP)


def check_choice(value: Any, device: str | None) -> None:
    """A config's precision checked against its device before anything runs (the device
    string as the user gave it, already checked)."""
    from .distributed import resolve_device
    resolve(value, resolve_device(device))


# -- old run folders ------------------------------------------------------------------------------
def upgrade_legacy(data: dict, source: str, error: Callable[[str], Exception]) -> dict:
    """``data`` (a config mapping, keys with underscores) with the keys ``precision`` replaced,
    ``amp`` and ``channels_last``, turned into ``precision``: ``amp: false`` means fp32 (no
    autocast was asked for), ``amp: true`` the default, auto; ``channels_last`` is dropped (the
    precision decides the layout).  A note says so once; an explicit ``precision`` wins."""
    old = {k: data[k] for k in LEGACY_KEYS if k in data}
    if not old:
        return data
    for k, v in old.items():
        if not isinstance(v, bool):
            raise error(f"{source}: {k}: expected true or false, got {v!r}")
    data = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
    picked = AUTO if old.get("amp", True) else FP32.name
    if "precision" not in data:
        data["precision"] = picked
    log.warning("%s: %s replaced by precision; read as precision %s%s", source,
                " and ".join(f"{k}: {str(v).lower()}" for k, v in old.items()), data["precision"],
                " (auto: bf16 where the device runs it natively; give --precision fp32 to repeat an fp32 run)"
                if data["precision"] == AUTO else "")
    return data
