"""Skip records: what the loader could not use rides on the next batch, and a run that loses
more than ``max_skip`` of its data fails (:func:`check_skips`)."""
from __future__ import annotations

import logging

import torch

from ..clitools import UserError

log = logging.getLogger("trainer.data")


class SampleError(ValueError):
    """A sample that cannot be used (no label, undecodable bitstream ...)."""


class DataLossError(UserError, RuntimeError):
    """More samples were skipped than ``max_skip`` allows (the message says which and why)."""


class SkipLog:
    """What this process's copy of the pipeline skipped, waiting to ride on the next batch."""

    def __init__(self):
        self.pending: list[tuple[int, str]] = []

    def add(self, count: int, reason: str) -> None:
        log.warning("skipped %d sample(s): %s", count, reason)
        self.pending.append((int(count), reason))

    def drain(self) -> list[tuple[int, str]]:
        out, self.pending = self.pending, []
        return out


def check_skips(skipped: int, seen: int, max_skip: float, what: str, reasons: list[str] = ()) -> None:
    """Raise DataLossError when ``skipped / (seen + skipped)`` is above ``max_skip``."""
    total = seen + skipped
    if skipped and total and skipped / total > max_skip:
        why = "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
        raise DataLossError(f"{what}: {skipped} of {total} samples skipped ({100 * skipped / total:.1f}% > "
                            f"--max-skip {100 * max_skip:g}%): {why}")


def attach_skips(skips: SkipLog):
    """Last stage: each batch carries the skip records made since the previous batch; what is
    left at the end of the stream comes in a batch without samples."""
    def stage(src):
        for batch in src:
            batch["skips"] = skips.drain()
            yield batch
        rest = skips.drain()
        if rest:
            yield {"key": [], "label": torch.zeros(0, dtype=torch.long), "skips": rest}
    return stage


def first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
