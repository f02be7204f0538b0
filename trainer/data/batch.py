"""Decoding samples straight into a batch: preallocated channels_last uint8 buffers (shared
memory in a loader worker, used again through :class:`_Ring`), the teacher's cached rows,
and (``gpu_jpeg``) JPEG bitstreams left for the device (:mod:`trainer.data.gpu_jpeg`)."""
from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from pipeline.limits import DEFAULT_BUDGET

from .completeness import decode_sized
from ..losses import UNLABELLED
from .gpu_jpeg import jpeg_size
from .plan import worker
from .shardsets import folder_key
from .skips import SampleError, SkipLog, first_line


_LABEL = re.compile(rb"\s*-?[0-9]{1,9}\s*")


def _label(value) -> int:
    """A ``.cls`` member: ASCII digits of a class index, or -1 (unlabelled); anything else
    (-7, 10^5000 digits, Unicode digits) is the sample's counted skip."""
    raw = value if isinstance(value, (bytes, bytearray)) else str(value).encode("utf-8", "replace")
    if not _LABEL.fullmatch(raw):
        raise SampleError(f"label {bytes(raw[:24])!r} is not a class index")
    label = int(raw)
    if label < UNLABELLED:
        raise SampleError(f"label {label} is not a class index (nor {UNLABELLED}, unlabelled)")
    return label


def _decode(data: bytes, what: str, picture: tuple[int, int] | None = None) -> np.ndarray:
    """A bitstream -> H x W x 3 uint8 (the pipeline's decoders: the pixels the manifests measured);
    ``picture``: the (width, height) it must have, checked from its header before decoding."""
    from pipeline.codecs import decode_any
    try:
        a = decode_any(data) if picture is None else decode_sized(decode_any, data, picture)
    except MemoryError:
        raise SampleError(f"{what}: out of memory while decoding") from None
    except Exception as exc:
        raise SampleError(f"{what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        return np.broadcast_to(a, a.shape[:2] + (3,))
    return a if a.shape[2] == 3 else a[:, :, :3]


_POPULATE = [True]   # madvise(MADV_POPULATE_WRITE) works here (Linux >= 5.14)


def _populate(t: torch.Tensor) -> None:
    """Map a fresh shared-memory buffer's pages in one system call instead of one page fault
    per 4 KiB as the decoder writes into it (about a quarter of that cost)."""
    if not _POPULATE[0]:
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
        start = t.data_ptr() - t.data_ptr() % page
        length = t.data_ptr() + t.untyped_storage().nbytes() - start
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), 23) != 0:   # MADV_POPULATE_WRITE
            _POPULATE[0] = False
    except (OSError, AttributeError, ValueError):
        _POPULATE[0] = False


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a loader worker, in shared memory, so that handing the batch
    to the main process copies nothing (what torch's default_collate does)."""
    if get_worker_info() is not None:
        try:
            n = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            storage = torch.UntypedStorage._new_shared(n)
            stride = [1] * len(shape)
            for i in range(len(shape) - 2, -1, -1):
                stride[i] = stride[i + 1] * shape[i + 1]
            t = torch.empty(0, dtype=dtype).set_(storage, 0, shape, stride)
            if n >= 1 << 20:
                _populate(t)
            return t
        except (AttributeError, RuntimeError, TypeError):  # a torch without that (private) API
            pass
    return torch.empty(shape, dtype=dtype)


class _Ring:
    """A loader worker's shared-memory batch buffers, used again once the main process says it
    has copied the batch out (``acked[worker]``, see :class:`_CopyOut`).  A fresh buffer per
    batch (what torch's collate does) costs a page fault per 4 KiB the decoder writes, about
    a fifth of decoding a JPEG-10 crop; a buffer used again costs none.  Buffers still in the
    main process's hands are never touched: a new one is made instead."""

    def __init__(self, acked: torch.Tensor, worker: int):
        self.acked, self.worker = acked, worker
        self.seq = 0
        self.busy: list[tuple[int, list]] = []           # (batch number, [(key, tensor)]) sent, not acked
        self.free: dict[tuple, list[torch.Tensor]] = {}
        self.pending: list = []

    def begin(self) -> None:
        done = int(self.acked[self.worker])
        keep = []
        for seq, bufs in self.busy:
            if seq <= done:
                for key, t in bufs:
                    self.free.setdefault(key, []).append(t)
            else:
                keep.append((seq, bufs))
        self.busy, self.pending = keep, []

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (shape, dtype)
        pool = self.free.get(key)
        t = pool.pop() if pool else _empty(shape, dtype)
        self.pending.append((key, t))
        return t

    def sent(self) -> tuple[int, int]:
        """(worker, batch number) of the batch just finished, for the main process's ack."""
        self.seq += 1
        self.busy.append((self.seq, self.pending))
        self.pending = []
        return self.worker, self.seq


class _Batch:
    """One batch being filled, sample by sample: each picture is decoded straight into its row
    of a preallocated uint8 N x H x W x 3 buffer (shared memory in a worker, used again: see
    :class:`_Ring`).  The batch hands out N x 3 x H x W views of it (torch's channels_last
    layout): no transposition, no stacking, no copy on the way to the main process."""

    def __init__(self, size: int, need_comp: bool, need_clean: bool, caches: dict | None, gpu_jpeg: bool,
                 ring: _Ring | None = None, picture: tuple[int, int] | None = None):
        self.size, self.need_comp, self.need_clean, self.caches = size, need_comp, need_clean, caches
        self.picture = picture        # (width, height) of every picture: one sample never sizes the batch
        self.gpu_jpeg = gpu_jpeg
        self.ring = ring
        if ring is not None:
            ring.begin()
        self.empty = ring.empty if ring is not None else _empty
        self.keys: list[str] = []
        self.labels: list[int] = []
        self.settings: list[str] = []                 # mixed runs: each sample's setting
        self.pixels: dict[str, torch.Tensor] = {}     # comp / clean -> N x H x W x 3
        self.arrays: dict[str, np.ndarray] = {}
        self.teacher: torch.Tensor | None = None
        self.jpeg: list[bytes] = []
        self.jpeg_size: tuple[int, int] | None = None

    @property
    def n(self) -> int:
        return len(self.keys)

    def _put(self, name: str, a: np.ndarray, what: str) -> None:
        buf = self.arrays.get(name)
        if buf is None:
            t = self.empty((self.size,) + a.shape, torch.uint8)
            self.pixels[name], self.arrays[name] = t, buf = t, t.numpy()
        elif buf.shape[1:] != a.shape:
            raise SampleError(f"{what}: a {a.shape[1]}x{a.shape[0]} picture in a batch of "
                              f"{buf.shape[2]}x{buf.shape[1]} pictures")
        buf[self.n] = a

    def add(self, sample: dict) -> None:
        """Decode ``sample`` into the next row; raises SampleError (the row stays free)."""
        key = sample["__key__"]
        if "cls" not in sample:
            raise SampleError("no .cls member")
        label = _label(sample["cls"])
        clean_k = comp_k = None
        for k in sample:
            if k.startswith("clean."):
                clean_k = k
            elif k.startswith("comp."):
                comp_k = k
        comp_from_clean = self.need_comp and comp_k is None    # lossless: x~ = x
        clean = None
        if self.need_clean or comp_from_clean:
            if clean_k is None:
                raise SampleError("no clean.* member")
            clean = _decode(sample[clean_k], clean_k, self.picture)
        jpeg = None
        if comp_from_clean:
            if self.gpu_jpeg:
                raise SampleError(f"{clean_k}: not a JPEG, but the batch is decoded on the GPU")
            self._put("comp", clean, clean_k)
        elif self.need_comp:
            if self.gpu_jpeg:
                if comp_k != "comp.jpg":
                    raise SampleError(f"{comp_k}: not a JPEG, but the batch is decoded on the GPU")
                budget = DEFAULT_BUDGET.with_pixels(self.picture[0] * self.picture[1]) if self.picture else None
                size = jpeg_size(sample[comp_k], comp_k, budget)
                want = self.picture or self.jpeg_size or size
                if size != want:
                    raise SampleError(f"{comp_k}: a {size[0]}x{size[1]} picture in a batch of "
                                      f"{want[0]}x{want[1]} pictures")
                jpeg = sample[comp_k]
            else:
                self._put("comp", _decode(sample[comp_k], comp_k, self.picture), comp_k)
        if self.need_clean:
            self._put("clean", clean, clean_k)
        if self.caches is not None:
            url = sample.get("__url__", "")
            d = os.path.dirname(url)
            cache = self.caches.get(d) or self.caches.get(folder_key(d))
            if cache is None:
                raise SampleError(f"no teacher cache for shards in {d}")
            row = cache.lookup(key)
            if self.teacher is None:
                self.teacher = self.empty((self.size,) + row.shape, torch.float16)
            self.teacher.numpy()[self.n] = row
        if jpeg is not None:
            self.jpeg_size = size
            self.jpeg.append(jpeg)
        self.keys.append(key)
        self.labels.append(label)
        if "__setting__" in sample:
            self.settings.append(sample["__setting__"])

    def finish(self) -> dict:
        n = self.n
        labels = self.empty((self.size,), torch.long)[:n]
        labels.numpy()[:] = self.labels
        out: dict[str, Any] = {"key": self.keys, "label": labels}
        if self.settings:
            out["setting"] = self.settings
        views = {k: t[:n].permute(0, 3, 1, 2) for k, t in self.pixels.items()}
        if self.need_comp:
            if self.jpeg:
                lengths = [len(b) for b in self.jpeg]
                out["comp_jpeg"] = torch.frombuffer(bytearray(b"".join(self.jpeg)), dtype=torch.uint8)
                out["comp_jpeg_lengths"] = torch.tensor(lengths, dtype=torch.long)
            else:
                out["comp"] = views["comp"]
        if self.need_clean:
            out["clean"] = views["clean"]
        if self.teacher is not None:
            out["teacher"] = self.teacher[:n]
        if self.ring is not None:
            out["__worker__"], out["__seq__"] = self.ring.sent()
        return out


def decode_batches(batch_size: int, need_comp: bool, need_clean: bool, caches: dict | None, skips: "SkipLog",
                   partial: bool = False, gpu_jpeg: bool = False, acked: torch.Tensor | None = None,
                   picture: tuple[int, int] | None = None):
    """Decode each sample into the batch being filled (comp.* with the pipeline's decoders,
    clean.* only when needed, the teacher's cached logits); emit full batches (and the last
    partial one when ``partial``).  A sample that fails is skipped and recorded, never the run.

    ``gpu_jpeg``: JPEG bitstreams are left undecoded (``comp_jpeg``: the bytes end to end,
    ``comp_jpeg_lengths``) for :class:`trainer.data.DeviceJpeg`; their headers are checked
    here (pixel budget, equal sizes).  ``acked``: in a worker, reuse the batch buffers the main
    process has copied out (:class:`_Ring`, :class:`_CopyOut`)."""
    def stage(src):
        w, _ = worker()
        ring = _Ring(acked, w) if acked is not None and get_worker_info() is not None else None
        batch = _Batch(batch_size, need_comp, need_clean, caches, gpu_jpeg, ring, picture)
        for s in src:
            try:
                batch.add(s)
            except Exception as exc:  # SampleError, KeyError from a cache, a decoder's bug
                where = f"{os.path.basename(str(s.get('__url__', '?')))}:{s.get('__key__', '?')}"
                skips.add(1, f"{where}: {exc if isinstance(exc, SampleError) else first_line(exc)}")
                continue
            if batch.n == batch_size:
                yield batch.finish()
                batch = _Batch(batch_size, need_comp, need_clean, caches, gpu_jpeg, ring, picture)
        if partial and batch.n:
            yield batch.finish()
    return stage
