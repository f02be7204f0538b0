"""How many classes a training batch holds: class-sorted shards against mixed ones.

For each order (``sorted``: the listing, class by class; ``mixed``: the pipeline's default
seeded permutation) this takes the pipeline's own plan of ../shared/imagenette/train
(``--shard-size 1000``: the keys, labels and shard cut `make shards` would write), writes
shards holding only each sample's ``cls`` (the batch composition depends on nothing else,
and decoding images would only make this slower), reads them with the trainer's default
train loader (shuffle buffer 1000, batch 32, 2 workers) and reports the mean number of
distinct classes per batch over one epoch, beside the i.i.d. expectation C(1 - (1 - 1/C)^B)
for C classes in proportion to the data.

    python benchmarks/bench_mixing.py [--src ../shared/imagenette --split train] [--markdown out.md] [--json benchmarks/results/mixing.json]
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.markdown import table  # noqa: E402
from pipeline.plan import make_plan  # noqa: E402
from pipeline.shards import shard_name  # noqa: E402
from pipeline.sources import list_source  # noqa: E402


def label_shards(plan, folder: Path) -> None:
    """The plan's shards with a ``cls`` member per sample, and the manifest fields the
    trainer's loader reads (count, shards)."""
    folder.mkdir(parents=True)
    for i, items in enumerate(plan.shards):
        with tarfile.open(folder / shard_name(i), "w", format=tarfile.GNU_FORMAT) as tar:
            for it in items:
                data = str(it.label).encode()
                info = tarfile.TarInfo(f"{it.key}.cls")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    manifest = {"setting": "lossless", "codec": "lossless", "q": None, "split": plan.split,
                "count": sum(len(s) for s in plan.shards),
                "shards": [{"name": shard_name(i), "count": len(s)} for i, s in enumerate(plan.shards)]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def distinct_per_batch(folder: Path, batch: int, workers: int, buffer: int, epochs: int) -> float:
    from trainer.data import LoaderSpec, group_shards, make_train_loader

    settings = group_shards(str(folder / "shard-*.tar"))
    counts = []
    for epoch in range(epochs):
        loader, _ = make_train_loader(settings, LoaderSpec(batch_size=batch, workers=workers, shuffle_buffer=buffer,
                                                           seed=0), epoch=epoch, need_comp=False, need_clean=False)
        counts += [len(set(b["label"].tolist())) for b in loader]
    return float(np.mean(counts))


def iid_expectation(labels: list[int], batch: int, draws: int = 20000, seed: int = 0) -> float:
    """Mean distinct classes in ``batch`` i.i.d. draws from the data's class proportions (by
    simulation; equals C(1 - (1 - 1/C)^B) for balanced classes)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(labels)
    return float(np.mean([len(np.unique(rng.choice(values, batch))) for _ in range(draws)]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "imagenette")
    ap.add_argument("--split", default="train")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path, help="the results file the docs block is rendered from (docsgen/readme_block.py)")
    args = ap.parse_args(argv)
    if not (args.src / args.split).is_dir():
        print(f"skipping: {args.src / args.split} is absent", file=sys.stderr)
        return
    source = list_source(args.src, args.split)
    labels = [it.label for it in source.items]
    n_classes = len(set(labels))
    balanced = n_classes * (1 - (1 - 1 / n_classes) ** args.batch_size)
    iid = iid_expectation(labels, args.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mixing-"))
    rows = []
    try:
        for order in ("sorted", "mixed"):
            plan = make_plan(source, args.split, order, 0, args.shard_size)
            per_shard = [len(Counter(it.label for it in s)) for s in plan.shards]
            label_shards(plan, tmp / order)
            value = distinct_per_batch(tmp / order, args.batch_size, args.workers, args.shuffle_buffer, args.epochs)
            rows.append([f"`--order {order}`" + (" (default)" if order == "mixed" else ""), len(plan.shards),
                         f"{min(per_shard)}–{max(per_shard)}", f"{value:.2f}", f"{value / iid:.2f}"])
            print(f"{order}: {value:.2f} distinct classes per batch (i.i.d. {iid:.2f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join([
        table(["order", "shards", "classes per shard", f"distinct classes per batch of {args.batch_size}",
               "of i.i.d."], rows),
        "",
        f"{len(labels)} images of {n_classes} classes ({args.src.name}/{args.split}), shards of {args.shard_size}, "
        f"the trainer's loader with shuffle buffer {args.shuffle_buffer}, batch {args.batch_size}, {args.workers} "
        f"workers, {args.epochs} epoch(s); i.i.d. draws give {iid:.2f} ({balanced:.2f} for {n_classes} balanced "
        "classes). `benchmarks/bench_mixing.py` (part of `make bench`) regenerates it.",
    ])
    print("\n" + text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    if args.json:
        from docsgen.readme_block import save
        save(args.json, text, "benchmarks/bench_mixing.py", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
