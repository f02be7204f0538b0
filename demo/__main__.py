"""`make demo`: the whole system end to end, on the embedded default or on your data.

    python -m demo                                    # scikit-image photos + EfficientNet-Lite0
    python -m demo --data /imagenet-style --weights model.pth --arch mobilenet_v2

Steps (each reuses what an earlier run already built):
 1. data      embedded: views of scikit-image's photos; train unlabelled, val labelled by the
              model's prediction on the clean crop.  --data: DATA/train and DATA/val.
 2. shards    lossless and one harsh setting per codec, train and val (pipeline)
 3. baseline  the pretrained model on every val setting (trainer.evaluate)
 4. train     expert and fine-tuning on one setting, same budget (trainer.train); label-free
              (--labels teacher) on the embedded data
 5. evaluate  both on every val setting
 6. report    Table 1 (Markdown + CSV) and the rate-accuracy plot (decisions.report)
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from pipeline.atomic import atomic_write, atomic_write_json
from pipeline.setting import Setting, SettingError
from trainer.clitools import UserError, run_click

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = "lossless,jpeg-10,j2k-200,bpg-46"


def step(title: str) -> None:
    click.echo(f"\n== {title}")


def available_settings(wanted: str) -> list[Setting]:
    """The settings of ``wanted`` whose codec works here (its library may be missing)."""
    from pipeline.codecs import CodecError, create

    try:
        settings = Setting.parse_list(wanted)
    except SettingError as exc:
        raise UserError(f"--settings: {exc}") from None
    out = []
    for s in settings:
        try:
            codec = create(s.codec, s.q)
            codec.encode(np.zeros((224, 224, 3), np.uint8))  # its library works here, at crop size
        except (CodecError, ImportError, OSError, RuntimeError) as exc:
            click.echo(f"   skipping {s.name}: {exc}")
            continue
        out.append(s)
    return out


def prepare_data(a, teacher_model) -> tuple[Path, str]:
    """(source root with train/ and val/, label mode for training)."""
    if a.data:
        root = Path(a.data)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise UserError(f"--data {root}: expected {root}/train and {root}/val (ImageNet-style folders)")
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
        click.echo(f"   val views labelled by the pretrained model on the clean crop: {len(counts)} classes, "
                   f"{sum(counts.values())} images")
        stamp.touch()
    return src, "teacher"


def run_complete(folder: Path, epochs: int) -> bool:
    last = folder / "metrics.jsonl"
    return (folder / "best.pth").exists() and last.exists() and \
        sum(1 for line in last.read_text().splitlines() if line.strip()) >= epochs


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", default=None, help="ImageNet-style folder with train/ and val/ (default: embedded photos).")
@click.option("--weights", default=None, help="Pretrained weights: a file or a torchvision weights name "
                                              "(default: DEFAULT, the embedded EfficientNet-Lite0 file).")
@click.option("--arch", default=None, help="Architecture (default efficientnet_lite0).")
@click.option("--out", default="runs/demo", type=click.Path(file_okay=False, path_type=Path), show_default=True)
@click.option("--settings", default=DEFAULT_SETTINGS, show_default=True, help="Comma-separated setting names.")
@click.option("--train-setting", default="j2k-200", show_default=True, help="The setting the expert is trained for.")
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True,
              help="Higher than the paper's 1e-5: the demo trains minutes, not days.")
@click.option("--alpha", type=float, default=1e-2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: all cores).")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None)
@click.option("--per-photo", type=click.IntRange(min=1), default=24, show_default=True, help="Views per embedded photo.")
@click.option("--photos", type=click.IntRange(min=1), default=None, help="Only the first N embedded photos (quick runs).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Images per split (quick runs).")
@click.option("--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="Loader processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--readme", is_flag=True, help="Also refresh the README's demo table and plot.")
@click.option("--progress/--no-progress", default=True)
def cli(**params):
    """`make demo`: the whole flow, on the embedded default or on your data."""
    run_demo(SimpleNamespace(**params))
    return 0


def run_demo(a) -> None:
    t_start = time.perf_counter()
    import torch

    from decisions.report import report
    from pipeline.build import build_setting
    from trainer import EvalConfig, TrainConfig, evaluate, train
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
    if not settings:
        raise UserError(f"--settings {a.settings}: no codec of these works here")
    for s in settings:
        for split in ("train", "val"):
            build_setting(src, split, s.codec, s.q, shards, shard_size=64, jobs=a.jobs, limit=a.limit,
                          progress=a.progress)
    names = [s.name for s in settings]
    train_setting = a.train_setting if a.train_setting in names else names[-1]
    val_globs = [str(shards / "val" / n / "shard-*.tar") for n in names]
    common = dict(workers=a.workers, progress=a.progress, limit=a.limit)

    step("3/6 the pretrained model on every setting")
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    evaluate(EvalConfig(arch=arch, weights=[weights], shards=val_globs, out=str(results), overwrite=True, **common))

    step(f"4/6 expert training and fine-tuning on {train_setting} (labels: {labels}), same budget")
    checkpoints = []
    for method in ("expert", "finetune"):
        out = runs / f"{method}-{train_setting}"
        if run_complete(out, a.epochs):
            click.echo(f"   {out} is complete: reused")
        else:
            train(TrainConfig(shards=[str(shards / "train" / train_setting / "shard-*.tar")],
                              val_shards=[str(shards / "val" / train_setting / "shard-*.tar")],
                              method=method, arch=arch, weights=weights, labels=labels, alpha=a.alpha, lr=a.lr,
                              epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, out=str(out),
                              workers=a.workers, resume="auto", steps_per_epoch=a.steps_per_epoch,
                              progress=a.progress))
        checkpoints.append(str(out / "best.pth"))

    step("5/6 the trained models on every setting")
    evaluate(EvalConfig(checkpoints=checkpoints, shards=val_globs, out=str(results), **common))

    step("6/6 report")
    report([results], shards, reports, runs=runs)
    table = (reports / "table1.md").read_text()
    elapsed = time.perf_counter() - t_start
    click.echo("\n" + table)
    plot = next(iter(sorted(reports.glob("fig4_*.png"))), None)
    click.echo(f"plot: {plot}")
    click.echo(f"demo wall time: {elapsed / 60:.1f} min ({elapsed:.0f} s)")
    atomic_write_json(reports / "wall_time.json", {"seconds": elapsed})
    if a.readme:
        update_readme(plot, table, elapsed, a, arch, labels, train_setting)


def main(argv=None) -> int:
    return run_click(cli, argv, "python -m demo")


def update_readme(plot: Path, table: str, elapsed: float, a, arch: str, labels: str, train_setting: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_block import replace_block

    docs = ROOT / "docs"
    atomic_write(docs / "demo_rate_accuracy.png", plot.read_bytes())
    block = (f"Generated by `make demo` ({arch}, expert and fine-tuning trained on `{train_setting}` for "
             f"{a.epochs} epochs, lr {a.lr:g}, α {a.alpha:g}, labels: {labels}; wall time "
             f"{elapsed / 60:.1f} min on {os.cpu_count()} CPU cores).\n\n{table.strip()}\n\n"
             f"![rate-accuracy](docs/demo_rate_accuracy.png)")
    readme = ROOT / "README.md"
    atomic_write(readme, replace_block(readme.read_text(), "demo", block))
    click.echo("README.md demo block and docs/demo_rate_accuracy.png refreshed")


if __name__ == "__main__":
    sys.exit(main())
