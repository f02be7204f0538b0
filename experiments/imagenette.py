"""The paper's comparison on real ImageNet images (Imagenette, 10 classes, 1000-way models):
pretrained vs stability vs fine-tune vs expert on harsh settings of two codecs, the same
budget for every trained method, several seeds; mean ± spread in the summary.

    python experiments/imagenette.py                        # defaults below; ../shared data
    SEEDS="0 1 2" EPOCHS=3 TRAIN_LIMIT=9469 experiments/imagenette.sh
    python experiments/imagenette.py --parallel-seeds --workers 4   # seeds side by side on one GPU

Every option can also be given as an environment variable named like it in capitals
(``SRC``, ``SEEDS``, ``STAB_LR``, ``PARALLEL_SEEDS`` ...; ``experiments/imagenette.sh`` runs
this script).  Methods: ``stability``, ``finetune``,
``expert`` and ``expert+teacher`` (label-free expert: ``--labels teacher``).  Every step
reuses finished work (shards, complete runs), so the script can be re-run.  It calls the
Python APIs (``pipeline.build.build_setting``, ``trainer.train``, ``trainer.evaluate``,
``decisions.report.report``), never a command line.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.setting import Setting, SettingError  # noqa: E402
from trainer import methods  # noqa: E402
from trainer.clitools import UserError, run_click  # noqa: E402


def parse_methods(text: str) -> list[tuple[str, str]]:
    """"stability finetune expert expert+teacher" -> [(method, labels)] (``expert-teacher``,
    the old spelling, is accepted)."""
    out = []
    for token in text.replace(",", " ").split():
        method, labels = methods.split_key(token.replace("-teacher", methods.TEACHER_LABELS))
        if method not in methods.names(trainable=True):
            raise UserError(f"METHODS: unknown method {token!r} (use {', '.join(methods.names(trainable=True))}, "
                            f"optionally with {methods.TEACHER_LABELS})")
        out.append((method, labels))
    return out


def run_dir(a, key: str, setting: str, seed: int) -> Path:
    return a.out / "runs" / f"{key.replace(methods.TEACHER_LABELS, '-teacher')}-{setting}-s{seed}"


def complete(run: Path, epochs: int) -> bool:
    metrics = run / "metrics.jsonl"
    return (run / "best.pth").exists() and metrics.exists() and \
        sum(1 for line in metrics.read_text().splitlines() if line.strip()) >= epochs


def train_seed(a, seed: int) -> None:
    from trainer import TrainConfig, train

    for setting in a.settings:
        for method, labels in a.methods:
            run = run_dir(a, methods.key(method, labels), setting.name, seed)
            if complete(run, a.epochs):
                continue
            hyper = (dict(lr=a.stab_lr, alpha=a.stab_alpha, sigma=a.stab_sigma) if method == "stability"
                     else dict(lr=a.lr, alpha=a.alpha if method == "expert" else None))
            train(TrainConfig(
                shards=[str(a.shards / "train" / setting.name / "shard-*.tar")],
                val_shards=[str(a.shards / "val" / setting.name / "shard-*.tar")] if a.val_during else None,
                arch=a.arch, weights=a.weights, method=method, labels=labels, epochs=a.epochs,
                train_limit=a.train_limit, val_limit=a.val_limit, batch_size=a.batch, seed=seed, out=str(run),
                resume="auto", device=a.device, progress=False, **({"workers": a.workers} if a.workers is not None else {}),
                **hyper))


def _train_seed_logged(a, seed: int) -> None:
    """A seed in its own process (--parallel-seeds), its output in OUT/train-s<seed>.log."""
    import logging
    log_path = a.out / f"train-s{seed}.log"
    with open(log_path, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        logging.basicConfig(level=logging.INFO, stream=f, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        train_seed(a, seed)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--src", envvar="SRC", type=click.Path(path_type=Path), default=Path("../shared/imagenette"))
@click.option("--weights", envvar="WEIGHTS", default="../shared/weights/mobilenet_v2_imagenet.pth")
@click.option("--arch", envvar="ARCH", default="mobilenet_v2")
@click.option("--settings", envvar="SETTINGS", default="jpeg-10 j2k-200")
@click.option("--methods", "methods_", envvar="METHODS", default="stability finetune expert",
              help="Also expert+teacher: label-free expert.")
@click.option("--seeds", envvar="SEEDS", default="0 1 2")
@click.option("--epochs", envvar="EPOCHS", type=click.IntRange(min=1), default=2)
@click.option("--train-limit", envvar="TRAIN_LIMIT", type=click.IntRange(min=1), default=2000,
              help="Samples per epoch (the shuffle draws from all train shards).")
@click.option("--val-limit", envvar="VAL_LIMIT", type=click.IntRange(min=1), default=None,
              help="Default: the whole val split.")
@click.option("--batch", envvar="BATCH", type=click.IntRange(min=1), default=32)
@click.option("--lr", envvar="LR", type=float, default=1e-4)
@click.option("--alpha", envvar="ALPHA", type=float, default=1e-2)
@click.option("--stab-lr", envvar="STAB_LR", type=float, default=1e-4, help="Stability: classifier layers only.")
@click.option("--stab-alpha", envvar="STAB_ALPHA", type=float, default=5e-3)
@click.option("--stab-sigma", envvar="STAB_SIGMA", type=float, default=4e-2)
@click.option("--out", envvar="OUT", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/imagenette"))
@click.option("--shards", envvar="SHARDS", type=click.Path(file_okay=False, path_type=Path), default=Path("shards"))
@click.option("--jobs", envvar="JOBS", type=click.IntRange(min=1), default=None, help="Default: all cores.")
@click.option("--device", envvar="DEVICE", default="auto")
@click.option("--val-during/--no-val-during", envvar="VAL_DURING", default=True,
              help="Per-epoch validation (without it the lr schedule follows the train loss).")
@click.option("--cross/--no-cross", envvar="CROSS", default=True,
              help="Evaluate every model on every setting (else on its own setting only).")
@click.option("--parallel-seeds/--serial-seeds", envvar="PARALLEL_SEEDS", default=False,
              help="Train the seeds at the same time (one big GPU, many cores).")
@click.option("--workers", envvar="WORKERS", type=click.IntRange(min=0), default=None,
              help="Loader processes per run (default: the trainer's).")
def cli(**params):
    """Imagenette: pretrained, stability, fine-tune and expert on harsh settings, several seeds."""
    from types import SimpleNamespace
    a = SimpleNamespace(**params)
    try:
        a.settings = Setting.parse_list(a.settings.replace(",", " ").split())
    except SettingError as exc:
        raise UserError(f"SETTINGS: {exc}") from None
    a.methods = parse_methods(a.methods_)
    try:
        a.seeds = [int(s) for s in a.seeds.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"SEEDS {a.seeds!r}: whole numbers") from None
    run(a)
    return 0


def run(a) -> None:
    import os

    from decisions.report import report
    from experiments.summarize import report as summary
    from pipeline.build import build_setting
    from trainer import EvalConfig, evaluate

    if not (a.src / "train").is_dir():
        raise UserError(f"no {a.src}/train: set SRC=/path/to/imagenette")
    a.out.mkdir(parents=True, exist_ok=True)
    results = a.out / "results.json"
    for s in a.settings:
        for split in ("train", "val"):
            build_setting(a.src, split, s.codec, s.q, a.shards, shard_size=500, jobs=a.jobs or os.cpu_count() or 1,
                          progress=False)
    val_globs = [str(a.shards / "val" / s.name / "shard-*.tar") for s in a.settings]
    common = dict(out=str(results), device=a.device, limit=a.val_limit, progress=False)

    # the pretrained model on every setting
    evaluate(EvalConfig(arch=a.arch, weights=[a.weights], shards=val_globs, **common))

    if a.parallel_seeds:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_train_seed_logged, args=(a, seed)) for seed in a.seeds]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [seed for seed, p in zip(a.seeds, procs) if p.exitcode != 0]
        if failed:
            raise UserError(f"seed(s) {', '.join(map(str, failed))} failed: see {a.out}/train-s*.log")
    else:
        for seed in a.seeds:
            train_seed(a, seed)

    checkpoints = {s.name: [str(run_dir(a, methods.key(m, lab), s.name, seed) / "best.pth")
                            for seed in a.seeds for m, lab in a.methods] for s in a.settings}
    if a.cross:
        evaluate(EvalConfig(checkpoints=[c for cs in checkpoints.values() for c in cs], shards=val_globs, **common))
    else:
        for s, glob in zip(a.settings, val_globs):
            evaluate(EvalConfig(checkpoints=checkpoints[s.name], shards=[glob], **common))
    report([results], a.shards, a.out / "reports", runs=a.out / "runs")
    import json
    text = summary(json.loads(results.read_text()))
    click.echo(text)
    atomic_write(a.out / "summary.md", text + "\n")


def main(argv=None) -> int:
    return run_click(cli, argv, "experiments/imagenette.py")


if __name__ == "__main__":
    sys.exit(main())
