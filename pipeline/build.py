"""Build the shards and the manifest of one (split, codec setting): plan, run, summarise.

Plan: the sorted source listing is cut into shards of ``shard_size`` items.  Each shard's
plan hash covers its items and every codec parameter, so a re-run skips shards that are
complete and still valid, and redoes missing, partial or outdated ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from joblib import Parallel, delayed
from tqdm import tqdm

from . import manifest as manifest_mod
from .codecs import create
from .shards import FORMAT_VERSION, ShardJob, load_record, record_path, run_shard
from .sources import list_source

log = logging.getLogger("pipeline")


def _plan_hash(codec, items) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "codec": codec.name,
                                   "params": codec.params()}, sort_keys=True).encode())
    for it in items:
        h.update(f"{it.rel}\t{it.label}\t{it.key}\n".encode())
    return h.hexdigest()[:20]


def _init_worker():
    # x265, OpenJPEG and numpy must not start their own thread pools inside each of the
    # JOBS worker processes: one core per worker is the plan.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def _run(job: ShardJob) -> dict:
    _init_worker()
    return run_shard(job)


def build_setting(src, split: str | None, codec: str, q=None, out="shards", shard_size: int = 1000,
                  jobs: int = 1, codec_options: dict | None = None, classes_file=None,
                  limit: int | None = None, progress: bool = True) -> dict:
    """Make ``out/<split>/<setting>/shard-*.tar`` and ``manifest.json``; return the manifest."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    codec_obj = create(codec, q, **(codec_options or {}))   # validates q and options up front
    source = list_source(src, split, classes_file)
    items = source.items[:limit] if limit else source.items
    split_name = split or "all"
    out_dir = Path(out) / split_name / codec_obj.setting
    out_dir.mkdir(parents=True, exist_ok=True)

    jobs_all = [ShardJob(i, items[s:s + shard_size], out_dir, codec_obj.name, codec_obj.q,
                         codec_obj.options, "")
                for i, s in enumerate(range(0, len(items), shard_size))]
    records: dict[int, dict] = {}
    pending = []
    for job in jobs_all:
        job.plan = _plan_hash(codec_obj, job.items)
        rec = load_record(out_dir, job.index)
        if rec is not None and rec.get("plan") == job.plan:
            records[job.index] = rec
        else:
            pending.append(job)
    _remove_stale(out_dir, len(jobs_all))

    todo = sum(len(j.items) for j in pending)
    if pending:
        log.info("%s/%s: %d of %d shards to make (%d images), %d jobs", split_name, codec_obj.setting,
                 len(pending), len(jobs_all), todo, jobs)
    with tqdm(total=todo, unit="img", desc=f"{split_name}/{codec_obj.setting}", disable=not progress or not todo,
              smoothing=0.1) as bar:
        if jobs == 1 or len(pending) <= 1:
            for job in pending:
                records[job.index] = run_shard(job, on_item=lambda: bar.update(1))
        else:
            runner = Parallel(n_jobs=jobs, return_as="generator_unordered")
            for rec in runner(delayed(_run)(job) for job in pending):
                records[int(rec["shard"][6:12])] = rec
                bar.update(len(rec["samples"]) + len(rec["failed"]))

    ordered = [records[i] for i in sorted(records)]
    manifest = manifest_mod.build(codec_obj, split_name, source, ordered,
                                  extra={"shard_size": shard_size, "limit": limit})
    manifest_mod.write(out_dir, manifest, ordered)
    return manifest


def _remove_stale(out_dir: Path, n_shards: int) -> None:
    """Shards beyond the current plan (an earlier run with a smaller shard size) must go,
    or a glob over the folder would read them."""
    for tar in out_dir.glob("shard-*.tar"):
        try:
            index = int(tar.name[6:12])
        except ValueError:
            continue
        if index >= n_shards:
            tar.unlink()
            record_path(out_dir, index).unlink(missing_ok=True)
    for tmp in out_dir.glob(".shard-*.tmp*"):
        tmp.unlink(missing_ok=True)
