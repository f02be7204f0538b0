"""What expert training buys a deployer: train on the compressed images of a few
classes (A), and measure both the gain on A and what the model keeps of the classes it was
not trained on (B), compressed and clean.

    experiments/retention.sh                      # the CPU budget of docs/results.md, ../shared data
    SEEDS="0 1 2" EPOCHS=5 DEVICE=cuda RESULTS=experiments/results/retention-gpu.json experiments/retention.sh

The split of Imagenette's 10 classes, fixed (``--a-classes``, ``--b-classes``): A, trained,
is the first five wnids in sorted order, B the other five (no choice by result):

    A: n01440764 tench, n02102040 English springer, n02979186 cassette player,
       n03000684 chain saw, n03028079 church
    B: n03394916 French horn, n03417042 garbage truck, n03425413 gas pump,
       n03445777 golf ball, n03888257 parachute

Steps, each reusing finished work:

1. Subsets (``experiments/subsets.py``, folders of links): A's train images
   (``--train-per-class`` per class; the same files the 10-class experiment draws for these
   classes) and the val subset of all ten classes (``--val-per-class``; the same as
   ``experiments/imagenette.py``'s, so the val shards are shared).  Labels stay ImageNet-1k
   indices: the class folders are wnids.
2. Shards: A's train images in every setting (mixed order); the val subset in every setting
   and lossless (B-clean).
3. Training: fine-tune, expert and label-free expert (``--labels teacher``) on every setting
   and seed, each with every ``--bn`` mode (``train``: the paper's; ``frozen``: the pretrained
   batch-norm statistics kept), with the same budget (epochs, samples per epoch, batch: the
   same number of steps).  A frozen run's folder is ``<method>-bn-frozen-<setting>-s<seed>``.
4. Evaluation (``trainer.evaluate`` with class groups A and B): every model on the val
   shards of its own setting and of lossless; the pretrained model on all of them.  The rows
   (one per model x setting x group, with ``top1`` and ``top1_present``, and the model's ``bn``
   mode) go to ``--results``.
5. The summary (``experiments/summarize.py``): mean ± std over seeds of A-compressed,
   B-compressed and B-clean, 1000-way and over the classes present, one row per method and
   ``--bn`` mode: what frozen statistics do to classes nobody trained on.

Why A's shards come from a subset source rather than a class filter in the trainer: the
shards are then exactly what a deployer has (images of their own classes), the manifest's
counts and class list are true, an epoch is A's images and nothing is decoded to be thrown
away; the trainer stays unchanged.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write  # noqa: E402
from trainer import methods  # noqa: E402
from trainer.clitools import UserError, run_click  # noqa: E402

from experiments import common  # noqa: E402

A_CLASSES = "n01440764 n02102040 n02979186 n03000684 n03028079"
B_CLASSES = "n03394916 n03417042 n03425413 n03445777 n03888257"


def parse_classes(text: str, what: str) -> list[str]:
    classes = text.replace(",", " ").split()
    if not classes:
        raise UserError(f"{what}: give at least one class folder name")
    if len(set(classes)) != len(classes):
        raise UserError(f"{what}: a class is listed twice")
    return classes


def prepare(a) -> tuple[dict[str, str], dict[str, str]]:
    """Subsets and shards; returns ({setting: A's train glob}, {setting: val glob}), the val
    settings being the trained ones and lossless."""
    train_name = common.subset_name(a.src, "train", a.train_per_class, a.subset_seed, tag="A")
    val_name = common.subset_name(a.src, "val", a.val_per_class, a.subset_seed)
    train_src, val_src, _, jobs = common.source_subsets(a, train_name, val_name, classes=a.a_classes)
    names = [s.name for s in a.settings]
    train_root = a.shards / train_name / "mixed"
    a.val_root = a.shards / val_name
    common.build_shards(train_src, "train", names, train_root, a.shard_size, jobs)
    val_settings = names + ([common.LOSSLESS] if common.LOSSLESS not in names else [])
    common.build_shards(val_src, "val", val_settings, a.val_root, a.shard_size, jobs)
    return ({s: common.shard_glob(train_root, "train", s) for s in names},
            {s: common.shard_glob(a.val_root, "val", s) for s in val_settings})


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common.options(seeds="0 1 2", train_per_class=300, val_per_class=100, shard_size=500)
@click.option("--settings", envvar="SETTINGS", default="j2k-200 jpeg-10")
@click.option("--methods", "methods_", envvar="METHODS", default="finetune expert expert+teacher")
@click.option("--bn", "bn_modes", envvar="BN", default="train frozen",
              help="The --bn modes every method is trained with (train: the paper's; frozen: the pretrained "
                   "batch-norm statistics kept).")
@click.option("--a-classes", envvar="A_CLASSES", default=A_CLASSES, help="Trained classes (folder names).")
@click.option("--b-classes", envvar="B_CLASSES", default=B_CLASSES, help="Held-out classes (folder names).")
@click.option("--out", envvar="OUT", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/experiments/retention"))
@click.option("--results", envvar="RESULTS", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("experiments/results/retention-cpu.json"),
              help="Results file; rows merge into it, and RESULTS.meta.json records the budget.")
@click.option("--shards", envvar="SHARDS", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/experiments/shards"), help="Shard root; the subsets' links go to SHARDS/../subsets.")
@click.option("--train-only", envvar="TRAIN_ONLY", is_flag=True, help="Stop after training.")
@click.option("--bn-check/--no-bn-check", envvar="BN_CHECK", default=True, show_default=True,
              help="Also score every trained model on the clean images with the pretrained model's batch-norm "
                   "statistics (into --bn-results): how much of B-clean is the weights, how much the statistics.")
@click.option("--bn-results", envvar="BN_RESULTS", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("experiments/results/retention-cpu-pretrained-bn.json"))
def cli(**params):
    """Retention: train on classes A, score A compressed, B compressed and B clean."""
    from types import SimpleNamespace
    a = SimpleNamespace(**params)
    a.settings = common.parse_settings(a.settings)
    if any(s.lossless for s in a.settings):
        raise UserError("SETTINGS: lossless is the clean reference, not a training setting here")
    a.methods = common.parse_methods(a.methods_)
    a.seeds = common.parse_seeds(a.seeds)
    a.bn = common.parse_bn_modes(a.bn_modes)
    a.a_classes = parse_classes(a.a_classes, "A_CLASSES")
    a.b_classes = parse_classes(a.b_classes, "B_CLASSES")
    if set(a.a_classes) & set(a.b_classes):
        raise UserError(f"A_CLASSES and B_CLASSES share {', '.join(sorted(set(a.a_classes) & set(a.b_classes)))}")
    a.budget = common.Budget.of(a)
    run(a)
    return 0


def run(a) -> str:
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    train_globs, val_globs = prepare(a)
    a.train_globs = train_globs
    groups = {"A": a.a_classes, "B": a.b_classes}
    checkpoints: dict[str, list[str]] = {}
    bn_of: dict[str, str] = {}
    for seed in a.seeds:
        for s in a.settings:
            for method, labels in a.methods:
                for bn in a.bn:
                    run_path = run_dir(a, method, labels, s.name, seed, bn)
                    common.train_run(run_path, train_globs[s.name], method, labels, seed, a.arch, a.weights,
                                     a.budget, bn=bn)
                    # no validation: the last epoch is scored (never a checkpoint chosen on the val images)
                    scored = str(common.scored_checkpoint(run_path, 0))
                    checkpoints.setdefault(s.name, []).append(scored)
                    bn_of[os.path.realpath(scored)] = bn
    if a.train_only:
        return ""
    common.evaluate_pretrained(a.results, a.arch, a.weights, val_globs, a.device, groups=groups, workers=a.workers,
                               precision=a.precision)
    for s in a.settings:
        own = {s.name: val_globs[s.name], common.LOSSLESS: val_globs[common.LOSSLESS]}
        common.evaluate_models(a.results, checkpoints[s.name], own, a.device, groups=groups, workers=a.workers,
                               precision=a.precision)
    tag_bn(a.results, bn_of)
    if a.bn_check:
        bn_check(a, [c for cs in checkpoints.values() for c in cs
                            if bn_of[os.path.realpath(c)] == "train"],
                 val_globs, groups)
    write_meta(a, time.time() - t0)
    from experiments.summarize import load_rows, retention_report
    text = retention_report(load_rows([a.results]))
    click.echo(text)
    atomic_write(a.out / "summary.md", text + "\n")
    return text


def run_dir(a, method: str, labels: str, setting: str, seed: int, bn: str) -> Path:
    """A run's folder: ``common.run_dir``'s, with ``-bn-frozen`` after the method for a frozen run."""
    key = methods.key(method, labels) + ("" if bn == "train" else f"-bn-{bn}")
    return common.run_dir(a.out, key, setting, seed)


def tag_bn(results: Path, bn_of: dict[str, str]) -> None:
    """Each trained model's row gets its ``bn`` mode (the retention view shows the modes as separate
    rows); ``bn_of``: real path of a scored checkpoint -> mode.  Paths in the file are relative to it."""
    rows = json.loads(results.read_text(encoding="utf-8"))
    here = results.resolve().parent
    for r in rows:
        ckpt = r.get("checkpoint")
        if isinstance(ckpt, str):
            mode = bn_of.get(os.path.realpath(ckpt if os.path.isabs(ckpt) else os.path.join(here, ckpt)))
            if mode is not None:
                r["bn"] = mode
    atomic_write(results, json.dumps(rows, indent=1, allow_nan=False) + "\n")


def with_pretrained_bn(best: Path, arch: str, weights: str) -> Path:
    """``<name>-pretrained-bn.pth`` beside a run's checkpoint ``<name>.pth`` (the one scored,
    ``last.pth``), which records what chose it: the trained weights with the
    pretrained model's batch-norm running statistics (those of clean images).  Training in
    train mode moves the statistics to the compressed training images; scoring this variant
    on clean images separates what the weights kept from what the statistics changed."""
    from trainer import checkpoint
    from trainer.models import build_model

    best = Path(best)
    out = best.with_name(f"{best.stem}-pretrained-bn.pth")
    if out.exists() and out.stat().st_mtime >= best.stat().st_mtime:
        return out
    state = checkpoint.load(best)
    ref = build_model(arch, weights, int(state.get("num_classes") or 1000)).net.state_dict()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    state["model"] = {k: (ref[k].clone() if k.endswith(stats) else v) for k, v in state["model"].items()}
    state["optimizer"] = {}   # not a checkpoint to resume from
    checkpoint.save(state, out)
    return out


def bn_check(a, checkpoints: list[str], val_globs: dict[str, str], groups: dict) -> None:
    """Every model trained with ``--bn train`` given back the pretrained batch-norm statistics,
    and the pretrained model itself, on the clean val images (``--bn-results``).  A ``--bn
    frozen`` model already has them."""
    clean = {common.LOSSLESS: val_globs[common.LOSSLESS]}
    variants = [str(with_pretrained_bn(Path(c), a.arch, a.weights)) for c in checkpoints]
    common.evaluate_pretrained(a.bn_results, a.arch, a.weights, clean, a.device, groups=groups, workers=a.workers,
                               precision=a.precision)
    common.evaluate_models(a.bn_results, variants, clean, a.device, groups=groups, workers=a.workers,
                           precision=a.precision)


def write_meta(a, seconds: float) -> None:
    """RESULTS.meta.json: what the rows were measured with (the summary prints it)."""
    runs = [run_dir(a, m, lab, s.name, seed, bn)
            for seed in a.seeds for s in a.settings for m, lab in a.methods for bn in a.bn]
    loader = {f"s{seed}": common.batch_stats(a.train_globs[a.settings[0].name], a.budget, seed) for seed in a.seeds}
    common.write_meta(a.results, {
        "experiment": "retention", "arch": a.arch, "weights": Path(a.weights).name,
        "settings": [s.name for s in a.settings], "methods": [methods.key(m, lab) for m, lab in a.methods],
        "bn": a.bn,
        "groups": {"A": a.a_classes, "B": a.b_classes}, "seeds": a.seeds,
        "train_per_class": a.train_per_class, "val_per_class": a.val_per_class, "subset_seed": a.subset_seed,
        "order": "mixed", "shard_size": a.shard_size, "loader": loader,
        "selection": common.selection_protocol(0),
        "wall_seconds_last_invocation": round(seconds)}, a.budget, runs)


def main(argv=None) -> int:
    return run_click(cli, argv, "experiments/retention.py")


if __name__ == "__main__":
    sys.exit(main())
