"""Run checkpoints and weight files: written atomically, read with ``weights_only=True`` only.

A checkpoint is untrusted input: a ``.pth`` is a pickle, and a pickle may call any function
while it is read.  Every file this project loads goes through :func:`load`, which lets
torch's weights-only unpickler build nothing but tensors and plain containers (dict, list,
tuple, str, int, float, bool, None).  What a run checkpoint holds is restricted to those
types on purpose (see ``trainer.run``), so nothing is lost by refusing the rest.

A refused or unreadable file becomes a :class:`CheckpointError` whose one-line message names
the file and the reason.  torch's own message suggests reloading with ``weights_only=False``;
that advice is never passed on.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import RecordingWriter, atomic_output
from pipeline.limits import FileKindError, open_regular_file

from .clitools import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be loaded safely (one line, names the file)."""


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refusal(path: Path, exc: BaseException) -> CheckpointError:
    found = _GLOBAL.search(str(exc))
    what = f"it asks to run {found.group(1)}" if found else "it holds objects other than tensors and plain data"
    return CheckpointError(f"{path}: refused: {what}, which a weights-only load does not allow; "
                           "the file was not loaded")


def open_checkpoint(path: str | os.PathLike, what: str = "file"):
    """An existing regular file opened for reading (:func:`pipeline.limits.open_regular_file`:
    a FIFO or a device is refused without blocking on it), or a one-line CheckpointError."""
    try:
        return open_regular_file(path, what)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what}") from None
    except FileKindError as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """The path of an existing regular file, or a one-line error (a FIFO or a device would
    block or never end)."""
    open_checkpoint(path, what).close()
    return Path(path)


def load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors, read
    from the regular file that was checked (no second open that a FIFO could replace)."""
    f = open_checkpoint(path, what)
    path = Path(path)
    try:
        with f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise _refusal(path, exc) from None
        raise CheckpointError(f"{path}: not a readable {what} ({_short(exc)})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated zip, garbage bytes: torch raises many types
        raise CheckpointError(f"{path}: not a readable {what} ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through the project's atomic writer (fsync'd: a checkpoint must survive a crash)."""
    with atomic_output(path, "wb", fsync=True) as f:
        out = RecordingWriter(f)
        try:
            torch.save(obj, out)
        except RuntimeError as exc:
            if out.error is None:
                raise
            raise out.error from exc   # atomic_output makes it one line: the output, the reason, nothing committed
    return Path(path)


# -- what a run checkpoint says about its training (the receiver and the reports read these) --------
def training_settings(ckpt: dict) -> list[dict]:
    """The settings a run checkpoint was trained on, in the order given (``trained_on``: setting,
    codec, q, bytes_per_image, bpp, pixels_per_image, weight); an empty list for a checkpoint
    without them (an older one: its setting is unknown)."""
    value = ckpt.get("trained_on") if isinstance(ckpt, dict) else None
    if not isinstance(value, list):
        return []
    return [dict(e) for e in value if isinstance(e, dict) and isinstance(e.get("setting"), str)]


def bn_mode(ckpt: dict) -> str:
    """How the run trained its normalisation layers: ``train`` or ``frozen`` (``train`` when the
    checkpoint does not say: what every run did before the option existed)."""
    value = ckpt.get("bn") if isinstance(ckpt, dict) else None
    return value if value in ("train", "frozen") else "train"
