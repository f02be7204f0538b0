"""The paper's comparison on real ImageNet images (Imagenette, 10 classes, 1000-way models):
pretrained vs stability vs fine-tune vs expert on harsh settings of two codecs, the same
budget for every trained method, several seeds; mean ± spread in the summary.

    python experiments/imagenette.py                        # the defaults: the CPU budget of docs/results.md
    SEEDS="0 1 2" EPOCHS=3 TRAIN_LIMIT=3000 DEVICE=cuda experiments/imagenette.sh
    ORDER=sorted METHODS="finetune expert" SETTINGS=j2k-200 OUT=runs/experiments/imagenette-sorted \\
        experiments/imagenette.sh                           # the same on class-sorted shards

Every option can also be given as an environment variable named like it in capitals
(``SRC``, ``SEEDS``, ``STAB_LR``, ``PARALLEL_SEEDS`` ...; ``experiments/imagenette.sh`` runs
this script).  Methods: ``stability``, ``finetune``, ``expert`` and ``expert+teacher``
(label-free expert: ``--labels teacher``).

The data: a seeded, class-balanced subset of SRC (``--train-per-class`` train images and
``--val-per-class`` val images of every class, ``experiments/subsets.py``), made as a folder of
links under ``SHARDS/../subsets``; train shards in ``--order`` (mixed, the default, or sorted) of
``--shard-size``; the val shards (the same for every model and every experiment that uses
the same val subset) in ``SHARDS/<val subset>/val``.  No model is chosen on the val images
it is scored on: each run validates every epoch on a selection split (``--select-per-class``
train images of every class that the train subset does not hold, checked disjoint from
the train and val subsets) and the tables score its best.pth; with ``--select-per-class 0``
there is no validation and the tables score last.pth.  The meta file beside the results
says which (``"selection"``), and every row says whether its checkpoint was chosen on the
images it scores (``selected_on_scored_data``; the summary and the report refuse those).  Every step reuses finished work
(shards, complete runs, models already in the results file), so the script can be re-run.
It calls the Python APIs (``pipeline.build.build``, ``trainer.train``, ``trainer.evaluate``,
``trainer.reports.report.report``), never a command line.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.plan import ORDERS  # noqa: E402
from pipeline.shards import LAYOUTS, PAIR  # noqa: E402
from trainer import methods  # noqa: E402
from trainer.clitools import UserError, run_click  # noqa: E402

from experiments import common  # noqa: E402

# re-exported for callers of the old module
parse_methods = common.parse_methods


def prepare(a) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Subsets and shards; returns ({setting: train glob}, {setting: val glob}, {setting:
    selection glob}, empty without a selection split) and sets ``a.val_root`` (the val
    shards' root, whose manifests the report reads)."""
    train_name = common.subset_name(a.src, "train", a.train_per_class, a.subset_seed)
    val_name = common.subset_name(a.src, "val", a.val_per_class, a.subset_seed)
    select_name = common.subset_name(a.src, "select", a.select_per_class, a.subset_seed, tag=f"not-{train_name}")
    names = [s.name for s in a.settings]
    train_root = a.shards / train_name / a.order
    val_root = a.val_root = a.shards / val_name
    # the selection images are train images: their shards say split "train", in a folder of their own
    select_root = a.shards / select_name
    globs = ({s: common.shard_glob(train_root, "train", s) for s in names},
             {s: common.shard_glob(val_root, "val", s) for s in names},
             {s: common.shard_glob(select_root, "train", s) for s in names} if a.select_per_class else {})
    if a.prebuilt:       # shards carried to a machine without the source images (a GPU machine, say)
        common.check_prebuilt({**globs[0], **{f"val {k}": v for k, v in globs[1].items()},
                               **{f"selection {k}": v for k, v in globs[2].items()}})
        return globs
    train_src, val_src, subsets, jobs = common.source_subsets(a, train_name, val_name)
    common.build_shards(train_src, "train", names, train_root, a.shard_size, jobs, order=a.order, layout=a.layout)
    common.build_shards(val_src, "val", names, val_root, a.shard_size, jobs, layout=a.layout)
    if a.select_per_class:
        select_src = common.select_subset(a.src, subsets, train_src, a.select_per_class, a.subset_seed, val_src)
        common.build_shards(select_src, "train", names, select_root, a.shard_size, jobs, layout=a.layout)
    return globs


def train_seed(a, seed: int, train_globs: dict[str, str], select_globs: dict[str, str]) -> None:
    for setting in a.settings:
        for method, labels in a.methods:
            common.train_run(common.run_dir(a.out, methods.key(method, labels), setting.name, seed),
                             train_globs[setting.name], method, labels, seed, a.arch, a.weights, a.budget,
                             val_glob=select_globs.get(setting.name), val_limit=a.select_limit)


def _train_seed_logged(a, seed: int, train_globs, select_globs) -> None:
    """A seed in its own process (--parallel-seeds), its output in OUT/train-s<seed>.log."""
    import logging
    log_path = a.out / f"train-s{seed}.log"
    with open(log_path, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        logging.basicConfig(level=logging.INFO, stream=f, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        train_seed(a, seed, train_globs, select_globs)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common.options(seeds="0 1 2", train_per_class=150, val_per_class=100, shard_size=500)
@click.option("--settings", envvar="SETTINGS", default="jpeg-10 j2k-200")
@click.option("--methods", "methods_", envvar="METHODS", default="stability finetune expert",
              help="Also expert+teacher: label-free expert.")
@click.option("--order", envvar="ORDER", type=click.Choice(ORDERS), default="mixed",
              help="Order of the train shards (sorted: class by class, the old default).")
@click.option("--val-limit", envvar="VAL_LIMIT", type=click.IntRange(min=1), default=None,
              help="Val samples scored per setting (default: the whole val subset).")
@click.option("--stab-lr", envvar="STAB_LR", type=float, default=1e-4, help="Stability: classifier layers only.")
@click.option("--stab-alpha", envvar="STAB_ALPHA", type=float, default=5e-3)
@click.option("--stab-sigma", envvar="STAB_SIGMA", type=float, default=4e-2)
@click.option("--out", envvar="OUT", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/experiments/imagenette"))
@click.option("--results", envvar="RESULTS", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Results file (default OUT/results.json); rows merge into it.")
@click.option("--shards", envvar="SHARDS", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/experiments/shards"), help="Shard root; the subsets' links go to SHARDS/../subsets.")
@click.option("--select-per-class", envvar="SELECT_PER_CLASS", type=click.IntRange(min=0), default=50,
              help="Train images of each class outside the train subset, validated on every epoch to choose "
                   "best.pth (never the val images the tables score); 0: no validation, the last epoch is scored.")
@click.option("--select-limit", envvar="SELECT_LIMIT", type=click.IntRange(min=1), default=None,
              help="Selection samples per validation (default: the whole selection subset).")
@click.option("--cross/--no-cross", envvar="CROSS", default=False,
              help="Evaluate every model on every setting (else on its own setting only).")
@click.option("--parallel-seeds/--serial-seeds", envvar="PARALLEL_SEEDS", default=False,
              help="Train the seeds at the same time (one big GPU, many cores).")
@click.option("--train-only", envvar="TRAIN_ONLY", is_flag=True, help="Stop after training.")
@click.option("--layout", envvar="LAYOUT", type=click.Choice(LAYOUTS), default=PAIR,
              help="Shard layout (split: the clean crops once, in lossless/; small enough to carry to a GPU).")
@click.option("--build-only", envvar="BUILD_ONLY", is_flag=True, help="Stop after making the shards.")
@click.option("--prebuilt", envvar="PREBUILT", is_flag=True,
              help="SHARDS already holds the shards (carried here from where the images are): no subsets, no "
                   "building; --src is only used for the folder names.")
@click.option("--codestream-results", envvar="CODESTREAM_RESULTS", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also score the pretrained model on the j2k settings' val images as a raw "
                                 "codestream (-o container=j2k, the old default) into this results file.")
def cli(**params):
    """Imagenette: pretrained, stability, fine-tune and expert on harsh settings, several seeds."""
    from types import SimpleNamespace
    a = SimpleNamespace(**params)
    a.settings = common.parse_settings(a.settings)
    a.methods = common.parse_methods(a.methods_)
    a.seeds = common.parse_seeds(a.seeds)
    a.results = a.results or a.out / "results.json"
    a.budget = common.Budget.of(a, stab_lr=a.stab_lr, stab_alpha=a.stab_alpha, stab_sigma=a.stab_sigma)
    run(a)
    return 0


def run(a) -> None:
    a.out.mkdir(parents=True, exist_ok=True)
    train_globs, val_globs, select_globs = prepare(a)
    if a.build_only:
        return
    if a.parallel_seeds:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_train_seed_logged, args=(a, seed, train_globs, select_globs))
                 for seed in a.seeds]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [seed for seed, p in zip(a.seeds, procs) if p.exitcode != 0]
        if failed:
            raise UserError(f"seed(s) {', '.join(map(str, failed))} failed: see {a.out}/train-s*.log")
    else:
        for seed in a.seeds:
            train_seed(a, seed, train_globs, select_globs)
    if a.train_only:
        return
    t0 = time.time()
    evaluate_all(a, val_globs)
    write_meta(a, train_globs, time.time() - t0)
    if a.codestream_results:
        codestream_check(a)
    from trainer.reports.report import report
    from experiments.summarize import report as summary
    report([a.results], a.val_root, a.out / "reports", runs=a.out / "runs")  # refuses rows chosen on val
    text = summary(json.loads(a.results.read_text()))
    click.echo(text)
    atomic_write(a.out / "summary.md", text + "\n")


def evaluate_all(a, val_globs: dict[str, str]) -> None:
    common.evaluate_pretrained(a.results, a.arch, a.weights, val_globs, a.device, workers=a.workers,
                               val_limit=a.val_limit, precision=a.precision)
    for s in a.settings:
        checkpoints = [str(common.scored_checkpoint(common.run_dir(a.out, methods.key(m, lab), s.name, seed),
                                                    a.select_per_class))
                       for seed in a.seeds for m, lab in a.methods]
        own = val_globs if a.cross else {s.name: val_globs[s.name]}
        common.evaluate_models(a.results, checkpoints, own, a.device, workers=a.workers, val_limit=a.val_limit,
                               precision=a.precision)


def codestream_check(a) -> None:
    """The pretrained model on the same val images with j2k written as a raw codestream (the
    old default) instead of JP2: what the container change alone moves (rate, PSNR, top-1)."""
    j2k = [s.name for s in a.settings if s.codec == "j2k"]
    if not j2k:
        raise UserError("--codestream-results: no j2k setting in SETTINGS")
    val_name = common.subset_name(a.src, "val", a.val_per_class, a.subset_seed)
    root = a.shards / f"{val_name}-codestream"
    common.build_shards(a.shards.parent / "subsets" / val_name, "val", j2k, root, a.shard_size,
                        a.jobs or os.cpu_count() or 1, codec_options={"container": "j2k"})
    common.evaluate_pretrained(a.codestream_results, a.arch, a.weights,
                               {s: common.shard_glob(root, "val", s) for s in j2k}, a.device, workers=a.workers,
                               val_limit=a.val_limit, precision=a.precision)


def write_meta(a, train_globs: dict[str, str], seconds: float) -> None:
    """RESULTS.meta.json: the budget, the data and what the loader fed the runs (the summary
    prints it)."""
    runs = [common.run_dir(a.out, methods.key(m, lab), s.name, seed)
            for seed in a.seeds for s in a.settings for m, lab in a.methods]
    loader = {f"s{seed}": common.batch_stats(train_globs[a.settings[0].name], a.budget, seed) for seed in a.seeds}
    common.write_meta(a.results, {
        "experiment": "imagenette", "arch": a.arch, "weights": Path(a.weights).name,
        "settings": [s.name for s in a.settings], "methods": [methods.key(m, lab) for m, lab in a.methods],
        "seeds": a.seeds, "train_per_class": a.train_per_class, "val_per_class": a.val_per_class,
        "selection": common.selection_protocol(a.select_per_class),
        "subset_seed": a.subset_seed, "order": a.order, "shard_size": a.shard_size, "loader": loader,
        "eval_seconds_last_invocation": round(seconds)}, a.budget, runs)


def main(argv=None) -> int:
    return run_click(cli, argv, "experiments/imagenette.py")


if __name__ == "__main__":
    sys.exit(main())
