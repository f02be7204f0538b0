"""The trainer's train loader with webdataset's stock per-sample stages: how the loader read
shards before the lean stages (``wds.tarfile_samples`` -> ``wds.shuffle`` -> decode each sample with
``pipeline.codecs.decode_any`` into its own CHW tensor -> ``wds.batched`` with ``torch.stack``).

tests/test_trainer_data.py checks that :func:`trainer.data.make_train_loader` yields exactly
the batches this reference yields (same samples, same order, same pixels) for the same
plan and seed; ``benchmarks/bench_loader.py`` times both side by side."""
from __future__ import annotations

import os

import numpy as np
import torch
import webdataset as wds

from pipeline.codecs import decode_any
from trainer.data import loader as data


def _chw(a: np.ndarray) -> torch.Tensor:
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return torch.from_numpy(np.array(a[:, :, :3], copy=True)).permute(2, 0, 1).contiguous()


def stock_tar_samples(expected: dict[str, int], skips):
    def stage(src):
        for shard in src:
            url, want, got = shard["url"], expected.get(shard["url"]), 0
            try:
                for sample in wds.tarfile_samples(iter([{"url": url}])):
                    got += 1
                    yield sample
            except Exception as exc:
                skips.add(max(1, want - got) if want is not None else 1, f"{os.path.basename(url)}: {exc}")
                continue
            if want is not None and got < want:
                skips.add(want - got, f"{os.path.basename(url)}: {got} samples, the manifest lists {want}")
    return stage


def stock_decode(need_comp: bool, need_clean: bool, caches, skips):
    def decode(sample):
        out = {"key": sample["__key__"], "label": int(sample["cls"])}
        clean_k = next((k for k in sample if k.startswith("clean.")), None)
        comp_k = next((k for k in sample if k.startswith("comp.")), None)
        clean = _chw(decode_any(sample[clean_k])) if need_clean or (need_comp and comp_k is None) else None
        if need_comp:
            out["comp"] = _chw(decode_any(sample[comp_k])) if comp_k is not None else clean
        if need_clean:
            out["clean"] = clean
        if caches is not None:
            cache = caches[os.path.dirname(sample["__url__"])]
            out["teacher"] = torch.from_numpy(cache.lookup(sample["__key__"]).astype(np.float16))
        return out

    def stage(src):
        for s in src:
            try:
                yield decode(s)
            except Exception as exc:
                skips.add(1, f"{s.get('__key__')}: {exc}")
    return stage


def collate(samples):
    out = {"key": [s["key"] for s in samples], "label": torch.tensor([s["label"] for s in samples])}
    for k in ("comp", "clean", "teacher"):
        if k in samples[0]:
            out[k] = torch.stack([s[k] for s in samples])
    return out


def train_loader(sets, spec, *, epoch, rank=0, world=1, need_comp=True, need_clean=False, caches=None,
                 batches=None):
    """make_train_loader's plan (in-process), with the stock per-sample stages."""
    from trainer.distributed import mix_seed

    sources = data._sources(sets, need_comp, need_clean)
    items, expected = data._items(sources, need_comp, need_clean), data._expected(sources)
    n_batches = batches or data.batches_per_epoch(sum(s.count for s, _ in sources), spec.batch_size, world)
    seed = mix_seed(spec.seed, epoch)
    plan = data.epoch_plan(items, expected, n_batches, seed=seed, rank=rank, world=world, workers=1)
    skips = data.SkipLog()
    stages = [data.PlannedShards(plan, seed, rank),
              stock_tar_samples(expected, skips),
              data.shuffle_buffer(spec.shuffle_buffer, seed, rank, plan, spec.batch_size),
              stock_decode(need_comp, need_clean, caches, skips),
              wds.batched(spec.batch_size, collation_fn=collate, partial=False),
              data.epoch_stage(n_batches, plan)]
    return wds.DataPipeline(*stages), n_batches
