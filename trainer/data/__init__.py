"""Streaming input over the pipeline's webdataset shards.

The loader is an explicit list of stages (open_clip style).  Training::

    epoch plan (which shards each rank and worker reads, how many batches it makes)
    -> this worker's shards [or shards drawn with replacement: --resampled]
    -> tar samples (trainer.data.tarstream; counted against the manifest; split layout: the
       reference's clean crop joined by key, only when the method needs it)
    -> shuffle buffer (the worker's quota of samples first, on its own)
    -> decode into the batch (comp.* with the pipeline's decoders, clean.* only when needed,
       cached teacher logits; straight into a channels_last uint8 buffer)
    -> the worker's quota of batches -> skip records attached to the batches

Evaluation: shard list -> split by rank -> split by worker -> tar samples -> decode into
the batch (the last one partial) -> skip records.

Every stage is seeded from (seed, epoch, rank, worker), so an epoch's order depends on
nothing else: a resumed run sees the same data as an uninterrupted one.  Every rank runs
exactly ``count // (world x batch)`` full batches (no DDP hang); :func:`epoch_plan` says
which samples an epoch covers (all of them, each once, when the shard counts allow).
Training needs at least ``world`` shards (``resampled=True`` draws shards with
replacement instead).

Split layout (:mod:`pipeline.shards`): a setting's samples hold the bitstream and the label;
the clean crop lives in the split's ``lossless`` folder, its reference.  Shard i of the
setting is read together with shard i of the reference only when the method needs the
clean crop (a live teacher); a cached teacher, fine-tuning and evaluation never open the
reference's tars, and stability training (the clean crop only) reads the reference alone.

Nothing is lost silently.  A truncated or unreadable tar, a shard with fewer samples than
its manifest lists, a sample without ``.cls`` or with an undecodable bitstream, a sample
whose clean crop its reference lacks is skipped and recorded; images a split-layout
setting lacks because its codec failed on them are not: they are in its manifest's
``failed``, not in its count.  Each batch carries the records of what was skipped since the
previous one (``batch["skips"]``: ``(count, reason)`` pairs; a batch with no samples may
carry the last records).  The loop adds them up and :func:`check_skips` fails a run that
loses more than ``max_skip`` of its data.

The package, one concern a module: :mod:`.shardsets` (a pattern's shards and their
manifests), :mod:`.completeness` (what a manifest promises held against what the files can
give), :mod:`.skips` (skip records), :mod:`.plan` (the epoch plan, the shard stages and the
shuffles), :mod:`.tarstream` (a tar's samples by WebDataset's rule), :mod:`.samples` (counted
tar reading), :mod:`.batch` (decoding into the batch), :mod:`.gpu_jpeg` (the GPU-JPEG
hand-off) and :mod:`.loader` (the loaders).
"""
from __future__ import annotations

from .batch import decode_batches
from .gpu_jpeg import DeviceJpeg, use_gpu_jpeg
from .loader import (PREFETCH, LoaderError, LoaderSpec, batches_per_epoch, default_workers, make_eval_loader,
                     make_train_loader)
from .plan import WorkerShare, epoch_plan
from .samples import tar_samples
from .shardsets import ShardError, ShardSet, check_classes, describe, expand_shards, folder_key, group_shards
from .skips import DataLossError, SampleError, SkipLog, check_skips

__all__ = ["PREFETCH", "DataLossError", "DeviceJpeg", "LoaderError", "LoaderSpec", "SampleError", "ShardError",
           "ShardSet", "SkipLog", "WorkerShare", "batches_per_epoch", "check_classes", "check_skips",
           "decode_batches", "default_workers", "describe", "epoch_plan", "expand_shards", "folder_key",
           "group_shards", "make_eval_loader", "make_train_loader", "tar_samples", "use_gpu_jpeg"]
