"""Run checkpoints and weight files: written atomically, read with ``weights_only=True`` only.

A checkpoint is untrusted input: a ``.pth`` is a pickle, and a pickle may call any function
while it is read.  Every file this project loads goes through :func:`load`, which lets
torch's weights-only unpickler build nothing but tensors and plain containers (dict, list,
tuple, str, int, float, bool, None).  What a run checkpoint holds is restricted to those
types on purpose (see ``trainer.run``), so nothing is lost by refusing the rest.

A refused or unreadable file becomes a :class:`CheckpointError` whose one-line message names
the file and the reason.  torch's own message suggests reloading with ``weights_only=False``;
that advice is never passed on.

A run checkpoint's keys (:data:`CHECKPOINT_KEYS`) are written by :class:`CheckpointSaver`,
which also records what chose each file (``selected_on``), and read back here
(:func:`training_settings`, :func:`bn_mode`, :func:`selected_on_scored`).
"""
from __future__ import annotations

import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import RecordingWriter, atomic_output
from pipeline.limits import FileKindError, open_regular_file
from pipeline.manifest import digest as manifest_digest

from .clitools import UserError
from .rundir import RunDir

#: what a run checkpoint holds, in the order it is written (plain types only: it is read back
#: with weights_only=True); the first six are what a run resumes from.  "best_metric": the best
#: score so far; "metrics": the epoch's row; "trained_on" and "bn": what it was trained on and
#: how (:func:`trained_on`, read back with :func:`training_settings` and :func:`bn_mode`);
#: "selected_on": what chose the file (:func:`selection_record`, LAST_EPOCH or TRAIN_LOSS;
#: missing in older checkpoints), which the evaluation reads with :func:`selected_on_scored`;
#: "precision": the precision it was trained in (``trainer.precision``: fp32 or bf16; missing in
#: older checkpoints)
CHECKPOINT_KEYS = ("model", "arch", "num_classes", "epoch", "optimizer", "scheduler", "args", "best_metric",
                   "metrics", "trained_on", "bn", "precision", "selected_on")
RESUME_KEYS = CHECKPOINT_KEYS[:6]
#: what a checkpoint records when no shard folder chose it
LAST_EPOCH = "last epoch"
TRAIN_LOSS = "train loss"


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


def trained_on(sets, weights: list[float]) -> list[dict]:
    """A run checkpoint's ``trained_on``: per training setting folder (a ``ShardSet``), in the
    order trained on, its setting, rate and asked weight (read back with :func:`training_settings`).
    A setting of weight 0 was read but never drawn: it is not one the model was trained on."""
    out = []
    for s, w in zip(sets, weights):
        if not w > 0:
            continue
        crop = (s.manifest.get("crop") or {}).get("center_crop")
        side = crop if isinstance(crop, int) else None
        out.append({"setting": s.name, "codec": s.codec, "q": s.q, "bytes_per_image": s.manifest.mean("bytes"),
                    "bpp": s.manifest.mean("bpp"), "pixels_per_image": side * side if side else None,
                    "weight": float(w)})
    return out


# -- what chose a checkpoint -------------------------------------------------------------------------
def selection_record(sets: list, metric: str) -> dict:
    """What a checkpoint chosen by ``metric`` on the shard sets ``sets`` records as
    ``selected_on``: per setting folder, its manifest digest and the shard file names."""
    return {"by": metric, "folders": [{"setting": s.name, "manifest": manifest_digest(s.manifest),
                                       "shards": sorted(os.path.basename(p) for p in s.shards)} for s in sets]}


def selected_on_scored(selected_on, s) -> bool | None:
    """Whether a checkpoint's ``selected_on`` record shares images with the shard set ``s``:
    the same manifest content and at least one shard file in common.  None: the record is
    missing or unreadable (a checkpoint written before the record existed)."""
    if selected_on in (LAST_EPOCH, TRAIN_LOSS):
        return False
    folders = selected_on.get("folders") if isinstance(selected_on, dict) else None
    if not isinstance(folders, list):
        return None
    digest, names = manifest_digest(s.manifest), {os.path.basename(p) for p in s.shards}
    return any(isinstance(f, dict) and f.get("manifest") == digest and names & set(f.get("shards") or ())
               for f in folders)


#: the epoch row's column of each ``metric`` a saver chooses on
VAL_COLUMNS = {"top1": "val_top1", "loss": "val_loss"}


class CheckpointSaver:
    """A run's ``last.pth`` every epoch and its ``best.pth`` when the epoch is the best so far,
    each recording what chose it.

    ``metric`` ``top1``: the highest validation top-1; ``loss``: the lowest validation loss.
    Without validation shards the lowest train loss chooses, never the evaluation images."""

    def __init__(self, run: RunDir, metric: str, val_sets: list, best: float | None = None):
        self.run, self.metric, self.validated, self.best = run, metric, bool(val_sets), best
        self.best_on = selection_record(val_sets, VAL_COLUMNS[metric]) if val_sets else TRAIN_LOSS

    def update(self, row: dict, loss: float) -> bool:
        """Whether the epoch of ``row`` is the best so far; ``loss`` is the one the LR schedule
        follows (validation, else training)."""
        score = row.get("val_top1") if (self.metric == "top1" and self.validated) else -loss
        improved = score is not None and math.isfinite(score) and (self.best is None or score > self.best)
        if improved:
            self.best = score
        return improved

    def save(self, state: dict, improved: bool) -> None:
        """Write ``last.pth`` (and ``best.pth`` when ``improved``) of ``state``: every key of
        :data:`CHECKPOINT_KEYS` but ``best_metric`` and ``selected_on``, which the saver adds."""
        if set(state) | {"best_metric", "selected_on"} != set(CHECKPOINT_KEYS):
            raise ValueError(f"a run checkpoint holds {', '.join(CHECKPOINT_KEYS)}; got {', '.join(state)}")

        def written(selected_on) -> dict:
            values = {**state, "best_metric": self.best, "selected_on": selected_on}
            return {k: values[k] for k in CHECKPOINT_KEYS}

        save(written(LAST_EPOCH), self.run.last)
        if improved:
            save(written(self.best_on), self.run.best)
