"""`make demo`: the whole system end to end, on the embedded default or on your data.

    python -m demo                                    # scikit-image photos + EfficientNet-Lite0
    python -m demo --data /imagenet-style --weights model.pth --arch mobilenet_v2

Steps (each reuses what an earlier run already built):
 1. data      embedded: views of scikit-image's photos; train unlabelled, val labelled by the
              model's prediction on the clean crop.  --data: DATA/train and DATA/val.
 2. shards    lossless and one harsh setting per codec, train and val (pipeline)
 3. baseline  the pretrained model on every val setting (trainer.eval)
 4. train     expert and fine-tuning on one setting, same budget (trainer.run); label-free
              (--labels teacher) on the embedded data
 5. evaluate  both on every val setting
 6. report    Table 1 (Markdown + CSV) and the rate-accuracy plot (trainer.report)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = "lossless,jpeg-10,j2k-200,bpg-46"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="ImageNet-style folder with train/ and val/ (default: embedded photos)")
    ap.add_argument("--weights", default=None, help="pretrained weights: a file or a torchvision weights name "
                                                    "(default: DEFAULT, the embedded EfficientNet-Lite0 file)")
    ap.add_argument("--arch", default=None, help="architecture (default efficientnet_lite0)")
    ap.add_argument("--out", default="runs/demo", type=Path)
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated <codec>-<q> settings")
    ap.add_argument("--train-setting", default="j2k-200", help="the setting the expert is trained for")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4, help="higher than the paper's 1e-5: the demo trains minutes, not days")
    ap.add_argument("--alpha", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--per-photo", type=int, default=24, help="views per embedded photo")
    ap.add_argument("--photos", type=int, default=None, help="use only the first N embedded photos (quick runs)")
    ap.add_argument("--limit", type=int, default=None, help="images per split (quick runs)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, default=2, help="loader processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readme", action="store_true", help="also refresh the README's demo table and plot")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap.parse_args(argv)


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def available_settings(wanted: str) -> list[tuple[str, object]]:
    from pipeline.codecs import CodecError, create

    out = []
    for s in wanted.split(","):
        name, _, q = s.strip().partition("-")
        try:
            codec = create(name, (float(q) if "." in q else int(q)) if q else None)
            codec.encode(np.zeros((224, 224, 3), np.uint8))  # its library works here, at crop size
        except (CodecError, ImportError, OSError, RuntimeError) as exc:
            print(f"   skipping {s}: {exc}")
            continue
        out.append((name, codec.q))
    return out


def prepare_data(a, teacher_model) -> tuple[Path, str]:
    """(source root with train/ and val/, label mode for training)."""
    if a.data:
        root = Path(a.data)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise SystemExit(f"--data {root}: expected {root}/train and {root}/val (ImageNet-style folders)")
        return root, "dataset"
    from demo.embedded import PHOTOS, label_by_model, make_views

    data = a.out / "data"
    train, val_unlabelled = make_views(data / "views", per_photo=a.per_photo, seed=a.seed,
                                       photos=list(PHOTOS)[: a.photos] if a.photos else None)
    src = data / "src"
    stamp = src / ".labelled"
    if not stamp.exists():
        shutil.rmtree(src, ignore_errors=True)
        (src / "train").parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(train, src / "train")
        counts = label_by_model(val_unlabelled, src / "val", teacher_model)
        print(f"   val views labelled by the pretrained model on the clean crop: {len(counts)} classes, "
              f"{sum(counts.values())} images")
        stamp.touch()
    return src, "teacher"


def run_complete(folder: Path, epochs: int) -> bool:
    last = folder / "metrics.jsonl"
    return (folder / "best.pth").exists() and last.exists() and \
        sum(1 for line in last.read_text().splitlines() if line.strip()) >= epochs


def main(argv=None) -> int:
    t_start = time.perf_counter()
    a = parse_args(argv)
    import torch

    from pipeline.build import build_setting
    from trainer import eval as trainer_eval
    from trainer import report as trainer_report
    from trainer import run as trainer_run
    from trainer.models import build_model

    torch.set_num_threads(a.threads or max(1, os.cpu_count() or 1))
    arch = a.arch or ("efficientnet_lite0" if not a.weights or not a.data else "mobilenet_v2")
    weights = a.weights or "DEFAULT"
    a.out.mkdir(parents=True, exist_ok=True)
    shards, runs, reports = a.out / "shards", a.out / "runs", a.out / "reports"
    results = reports / "results.json"

    step(f"1/6 data ({'embedded scikit-image photos' if not a.data else a.data}); model {arch} ({weights})")
    model = build_model(arch, weights)
    src, labels = prepare_data(a, model)

    step("2/6 shards")
    settings = available_settings(a.settings)
    for codec, q in settings:
        for split in ("train", "val"):
            build_setting(src, split, codec, q, shards, shard_size=64, jobs=a.jobs, limit=a.limit, progress=a.progress)
    names = [codec if q is None else f"{codec}-{q:g}" for codec, q in settings]
    train_setting = a.train_setting if a.train_setting in names else names[-1]
    val_globs = [str(shards / "val" / n / "shard-*.tar") for n in names]
    common = ["--workers", str(a.workers)] + ([] if a.progress else ["--no-progress"])
    if a.limit:
        common += ["--limit", str(a.limit)]

    step("3/6 the pretrained model on every setting")
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    trainer_eval.main(["--arch", arch, "--weights", weights, "--shards", *val_globs, "--out", str(results),
                       "--overwrite", *common])

    step(f"4/6 expert training and fine-tuning on {train_setting} (labels: {labels}), same budget")
    checkpoints = []
    for method in ("expert", "finetune"):
        out = runs / f"{method}-{train_setting}"
        argv_run = ["--shards", str(shards / "train" / train_setting / "shard-*.tar"),
                    "--val-shards", str(shards / "val" / train_setting / "shard-*.tar"),
                    "--method", method, "--arch", arch, "--weights", weights, "--labels", labels,
                    "--alpha", str(a.alpha), "--lr", str(a.lr), "--epochs", str(a.epochs),
                    "--batch-size", str(a.batch_size), "--seed", str(a.seed), "--out", str(out),
                    "--workers", str(a.workers), "--resume", "auto"]
        if a.steps_per_epoch:
            argv_run += ["--steps-per-epoch", str(a.steps_per_epoch)]
        if not a.progress:
            argv_run.append("--no-progress")
        if run_complete(out, a.epochs):
            print(f"   {out} is complete: reused")
        else:
            trainer_run.main(argv_run)
        checkpoints.append(str(out / "best.pth"))

    step("5/6 the trained models on every setting")
    trainer_eval.main(["--checkpoint", *checkpoints, "--shards", *val_globs, "--out", str(results), *common])

    step("6/6 report")
    trainer_report.main(["--results", str(results), "--shards", str(shards), "--runs", str(runs),
                         "--out", str(reports)])
    table = (reports / "table1.md").read_text()
    elapsed = time.perf_counter() - t_start
    print("\n" + table)
    plot = next(iter(sorted(reports.glob("fig4_*.png"))), None)
    print(f"plot: {plot}")
    print(f"demo wall time: {elapsed / 60:.1f} min ({elapsed:.0f} s)")
    (reports / "wall_time.json").write_text(json.dumps({"seconds": elapsed}) + "\n")
    if a.readme:
        update_readme(plot, table, elapsed, a, arch, labels, train_setting)
    return 0


def update_readme(plot: Path, table: str, elapsed: float, a, arch: str, labels: str, train_setting: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_block import replace_block

    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copyfile(plot, docs / "demo_rate_accuracy.png")
    block = (f"Generated by `make demo` ({arch}, expert and fine-tuning trained on `{train_setting}` for "
             f"{a.epochs} epochs, lr {a.lr:g}, α {a.alpha:g}, labels: {labels}; wall time "
             f"{elapsed / 60:.1f} min on {os.cpu_count()} CPU cores).\n\n{table.strip()}\n\n"
             f"![rate-accuracy](docs/demo_rate_accuracy.png)")
    readme = ROOT / "README.md"
    readme.write_text(replace_block(readme.read_text(), "demo", block))
    print(f"README.md demo block and docs/demo_rate_accuracy.png refreshed")


if __name__ == "__main__":
    sys.exit(main())
