"""Reading a shard's samples, counted against its manifest (split layout: the reference's
clean crops joined by key); what cannot be read is recorded, never lost silently."""
from __future__ import annotations

import os

from . import tarstream
from .skips import SkipLog, first_line


def _joined(samples, ref_url: str, skips: "SkipLog"):
    """Join the reference's clean crop to each sample of a split-layout shard, by key.

    Within a shard the setting's keys are the reference's keys in the same order, minus the
    images the codec failed on (they are in the setting's ``failed``, not in its count): walk
    the reference forward until the key matches.  A sample whose key the rest of the
    reference does not hold, or whose reference is unreadable, is skipped and counted."""
    ref = tarstream.tar_samples(ref_url, fields=("cls", "clean"))
    ref_error = None
    name = os.path.basename(ref_url)
    for s in samples:
        key = s["__key__"]
        if ref_error is None:
            try:
                r = next(ref, None)
                while r is not None and r["__key__"] != key:
                    r = next(ref, None)      # an image the setting lacks (its codec failed on it)
            except Exception as exc:         # truncated / corrupt reference tar
                r, ref_error = None, f"the reference's {name} is unreadable ({first_line(exc)})"
            if r is None and ref_error is None:
                ref_error = f"not in the reference's {name} (or out of order: python -m pipeline check --deep)"
            if r is not None:
                for k, v in r.items():
                    if k.startswith("clean."):
                        s[k] = v
                if r.get("cls") is not None and s.get("cls") is not None and r["cls"] != s["cls"]:
                    skips.add(1, f"{os.path.basename(s['__url__'])}:{key}: label {s['cls']!r} but the "
                                 f"reference's is {r['cls']!r}")
                    continue
                yield s
                continue
        skips.add(1, f"{os.path.basename(s['__url__'])}:{key}: no clean crop: {ref_error}")


def tar_samples(expected: dict[str, int], skips: "SkipLog"):
    """The samples of each shard (:mod:`trainer.data.tarstream`), one shard at a time, so that what a
    shard loses is counted: a shard that cannot be opened or read to the end, or holds fewer
    samples than its manifest lists, records the missing samples in ``skips``.  A shard item
    with ``ref`` (split layout, clean crop needed) gets the reference's clean crops joined
    (:func:`_joined`, which counts the samples it cannot join)."""
    def stage(src):
        seen: set[str] = set()
        empty_in_a_row = 0
        for shard in src:
            url = shard["url"]
            if empty_in_a_row > len(seen):   # cycling over shards that are all unreadable
                return
            seen.add(url)
            empty_in_a_row += 1
            want = expected.get(url)
            read = [0]

            def counted(samples):
                for sample in samples:
                    read[0] += 1
                    yield sample
            try:
                samples = counted(tarstream.tar_samples(url, fields=shard.get("fields")))
                if shard.get("ref"):
                    samples = _joined(samples, shard["ref"], skips)
                for sample in samples:
                    empty_in_a_row = 0
                    if want is not None and read[0] > want:
                        continue      # beyond the manifest's count: counted below, never used
                    yield sample
            except Exception as exc:  # truncated / corrupt tar: the rest of the shard is lost
                lost = max(1, want - read[0]) if want is not None else 1
                skips.add(lost, f"{os.path.basename(url)}: unreadable after {read[0]} sample(s) ({first_line(exc)})")
                continue
            if want is not None and read[0] < want:
                skips.add(want - read[0], f"{os.path.basename(url)}: {read[0]} samples, the manifest lists {want}")
            elif want is not None and read[0] > want:
                skips.add(read[0] - want, f"{os.path.basename(url)}: {read[0]} samples, the manifest lists {want}: "
                                          "not the shard the manifest describes; the samples beyond it were not used")
    return stage
