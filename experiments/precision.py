"""bf16 against fp32 (``--precision``) on real images: does evaluating or training in bf16
change the answers?

    python experiments/precision.py                     # the CPU budget of docs/benchmarks.md
    SEEDS="0 1 2 3" TRAIN_PER_CLASS=300 experiments/precision.sh

1. Evaluation: the pretrained MobileNetV2 and one trained expert (the fp32 run of the first
   seed) are each evaluated in fp32 and in bf16 on the same val images of every ``--settings``
   setting (``--val-per-class`` images of each Imagenette class: 1000 by default).  Goal: top-1
   within ``--eval-goal`` points (0.3) for every (model, setting).
2. Training: expert training on ``--train-setting`` in fp32 and in bf16, the same budget and
   the same seeds (``--seeds``); every run is scored after its last epoch (no validation: no
   model is chosen on the images reported) on that setting's val images, in the precision it
   was trained in.  Goal: on every seed, bf16's top-1 differs from fp32's of the same seed by
   no more than the spread of the fp32 seeds (their range, max - min).

The data: seeded, class-balanced subsets of SRC (``experiments/subsets.py``), in split layout
(the clean crops stored once; the teacher cache of each precision built once on them).

Outputs: OUT/results-fp32.json and OUT/results-bf16.json (``trainer.eval`` rows: the same
models and images, one file per precision), the committed ``--publish`` file (the numbers,
the command, the environment and the Markdown block, ``benchmarks/readme_block.save``) and
its meta file (the budget).  docs/benchmarks.md's block is rendered from ``--publish``
(``python benchmarks/readme_block.py precision-accuracy``).  Every step reuses finished work.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.markdown import table  # noqa: E402
from pipeline.provenance import portable_path  # noqa: E402
from trainer.clitools import UserError, run_click  # noqa: E402
from trainer.precision import cpu_words  # noqa: E402
from trainer.rundir import RunDir  # noqa: E402

from experiments import common  # noqa: E402

#: the two precisions compared, the reference first
PRECISIONS = ("fp32", "bf16")
PRETRAINED = "pretrained"


def prepare(a) -> tuple[str, dict[str, str]]:
    """Subsets and split-layout shards; (train glob, {val setting: glob})."""
    train_name = common.subset_name(a.src, "train", a.train_per_class, a.subset_seed)
    val_name = common.subset_name(a.src, "val", a.val_per_class, a.subset_seed)
    train_root, val_root = a.shards / train_name, a.shards / val_name
    train_src, val_src, _, jobs = common.source_subsets(a, train_name, val_name)
    common.build_shards(val_src, "val", a.settings, val_root, a.shard_size, jobs, layout="split")
    common.build_shards(train_src, "train", [a.train_setting], train_root, a.shard_size, jobs, layout="split")
    return (common.shard_glob(train_root, "train", a.train_setting),
            {s: common.shard_glob(val_root, "val", s) for s in a.settings})


def run_folder(a, precision: str, seed: int) -> Path:
    return a.out / "runs" / f"expert-{a.train_setting}-{precision}-s{seed}"


def results_file(a, precision: str) -> Path:
    return a.out / f"results-{precision}.json"


def budget(a, precision: str) -> common.Budget:
    return dataclasses.replace(a.budget, precision=precision)


def train_all(a, train_glob: str) -> dict[str, float]:
    """Every (precision, seed) run, the precisions taking turns seed by seed; the seconds each
    precision's training took (runs reused from an earlier invocation count 0)."""
    seconds = dict.fromkeys(PRECISIONS, 0.0)
    for seed in a.seeds:
        for p in PRECISIONS:
            t0 = time.time()
            common.train_run(run_folder(a, p, seed), train_glob, "expert", "dataset", seed, a.arch, a.weights,
                             budget(a, p))
            seconds[p] += time.time() - t0
            click.echo(f"{run_folder(a, p, seed).name}: {time.time() - t0:.0f} s", err=True)
    return seconds


def evaluate_all(a, train_glob: str, val_globs: dict[str, str]) -> None:
    """Part 1 (pretrained and the first fp32 expert, both precisions, every setting) and part 2
    (every run on its training setting, in its own precision)."""
    expert = str(RunDir(run_folder(a, PRECISIONS[0], a.seeds[0])).last)
    for p in PRECISIONS:
        results = results_file(a, p)
        common.evaluate_pretrained(results, a.arch, a.weights, val_globs, a.device, workers=a.workers, precision=p)
        common.evaluate_models(results, [expert], val_globs, a.device, workers=a.workers, precision=p)
        own = [str(RunDir(run_folder(a, p, s)).last) for s in a.seeds]
        common.evaluate_models(results, own, {a.train_setting: val_globs[a.train_setting]}, a.device,
                               workers=a.workers, precision=p)


def _rows(a, precision: str) -> list[dict]:
    rows = json.loads(results_file(a, precision).read_text(encoding="utf-8"))
    return [r for r in rows if r.get("group") is None and r.get("precision") == precision]


def _find(rows: list[dict], setting: str, checkpoint: Path | None, base: Path) -> dict:
    """The row of a checkpoint (None: the pretrained model) on a setting."""
    stored = portable_path(checkpoint, base) if checkpoint is not None else None
    for r in rows:
        if r["setting"] == setting and ((r.get("method") == PRETRAINED) if checkpoint is None
                                        else r.get("checkpoint") == stored):
            return r
    raise UserError(f"no row of {checkpoint or PRETRAINED} on {setting} in the {base} results")


def collect(a) -> dict:
    """The numbers of both parts, read from the two results files and the run folders."""
    rows = {p: _rows(a, p) for p in PRECISIONS}
    expert = RunDir(run_folder(a, PRECISIONS[0], a.seeds[0])).last
    evaluation = []
    for name, ckpt in ((PRETRAINED, None), (f"expert on {a.train_setting}, fp32 seed {a.seeds[0]}", expert)):
        for s in a.settings:
            got = {p: _find(rows[p], s, ckpt, a.out) for p in PRECISIONS}
            evaluation.append({"model": name, "setting": s, "count": got["fp32"]["count"],
                               **{f"{k}_{p}": got[p][k] for p in PRECISIONS for k in ("top1", "top5", "loss")},
                               "top1_delta": got["bf16"]["top1"] - got["fp32"]["top1"]})
    training = []
    for seed in a.seeds:
        entry = {"seed": seed}
        for p in PRECISIONS:
            run = RunDir(run_folder(a, p, seed))
            r = _find(rows[p], a.train_setting, run.last, a.out)
            m = run.metrics()
            entry.update({f"top1_{p}": r["top1"], f"top5_{p}": r["top5"], f"train_loss_{p}": m[-1]["train_loss"],
                          f"train_images_per_s_{p}": statistics.mean(x["images_per_s"] for x in m)})
        entry["top1_delta"] = entry["top1_bf16"] - entry["top1_fp32"]
        training.append(entry)
    f32 = [t["top1_fp32"] for t in training]
    b16 = [t["top1_bf16"] for t in training]
    spread = max(f32) - min(f32)
    return {"evaluation": evaluation, "training": training, "fp32_seed_range": spread,
            "bf16_seed_range": max(b16) - min(b16),
            "eval_goal_met": all(abs(e["top1_delta"]) <= a.eval_goal for e in evaluation),
            "seeds_within_spread": sum(abs(t["top1_delta"]) <= spread for t in training),
            "count": evaluation[0]["count"]}


def render(a, res: dict, seconds: dict | None) -> str:
    """The docs block: both parts' tables and what each goal came to."""
    ev = [[e["model"], e["setting"], e["count"], f"{e['top1_fp32']:.2f}", f"{e['top1_bf16']:.2f}",
           f"{e['top1_delta']:+.2f}", f"{e['top5_fp32']:.2f}", f"{e['top5_bf16']:.2f}",
           f"{e['loss_fp32']:.4f}", f"{e['loss_bf16']:.4f}"] for e in res["evaluation"]]
    tr = [[t["seed"], f"{t['top1_fp32']:.2f}", f"{t['top1_bf16']:.2f}", f"{t['top1_delta']:+.2f}",
           f"{t['train_loss_fp32']:.4f}", f"{t['train_loss_bf16']:.4f}", f"{t['train_images_per_s_fp32']:.1f}",
           f"{t['train_images_per_s_bf16']:.1f}"] for t in res["training"]]

    def mean_sd(k):
        v = [t[k] for t in res["training"]]
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"
    n, spread = len(res["training"]), res["fp32_seed_range"]
    worst = max(abs(e["top1_delta"]) for e in res["evaluation"])
    lines = [
        f"bf16 against fp32 on Imagenette ({a.arch}, {Path(a.weights).name}; 1000-way top-1 in %; "
        f"{res['count']} val images per setting, {a.val_per_class} per class; CPU: {cpu_words()}).",
        "",
        f"Evaluation: the same models and images, evaluated in each precision (goal: |Δ top-1| <= {a.eval_goal:g}):",
        "",
        table(["model", "setting", "images", "top-1 fp32", "top-1 bf16", "Δ", "top-5 fp32", "top-5 bf16",
               "loss fp32", "loss bf16"], ev, align=["l", "l"] + ["r"] * 8),
        "",
        f"Largest |Δ top-1|: {worst:.2f} points ({'goal met' if res['eval_goal_met'] else 'goal missed'}).",
        "",
        f"Training: expert on {a.train_setting}, {a.budget.epochs} epoch(s) of {a.train_per_class * 10} train images "
        f"(batch {a.budget.batch}, lr {a.budget.lr:g}, alpha {a.budget.alpha:g}), the teacher cached in the run's "
        f"precision; scored after the last epoch on the {a.train_setting} val images in the precision it was trained "
        "in; img/s: the training epochs' own rate (loader included) on this shared machine:",
        "",
        table(["seed", "top-1 fp32", "top-1 bf16", "Δ", "train loss fp32", "train loss bf16", "img/s fp32",
               "img/s bf16"], tr, align=["r"] * 8),
        "",
        f"Over {n} seeds: fp32 {mean_sd('top1_fp32')}, bf16 {mean_sd('top1_bf16')} (mean ± sample std); seed range "
        f"fp32 {spread:.2f}, bf16 {res['bf16_seed_range']:.2f} points. bf16 is within the fp32 seed range of its "
        f"own seed's fp32 run on {res['seeds_within_spread']} of {n} seeds"
        + (" (goal met on every seed)." if res["seeds_within_spread"] == n else " (goal missed on "
           f"{n - res['seeds_within_spread']} seed(s)).")]
    if seconds:
        lines[-1] += (f" Training time of this invocation: fp32 {seconds['fp32']:.0f} s, "
                      f"bf16 {seconds['bf16']:.0f} s.")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common.options(seeds="0 1 2", train_per_class=150, val_per_class=100, shard_size=250)
@click.option("--settings", envvar="SETTINGS", default="jpeg-10 j2k-200", help="The val settings of part 1.")
@click.option("--train-setting", envvar="TRAIN_SETTING", default="jpeg-10", help="The setting of part 2's runs.")
@click.option("--eval-goal", type=float, default=0.3, help="Largest |Δ top-1| (points) of part 1.")
@click.option("--out", envvar="OUT", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/experiments/precision"))
@click.option("--shards", envvar="SHARDS", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Shard root (default OUT/shards); the subsets' links go to SHARDS/../subsets.")
@click.option("--publish", envvar="PUBLISH", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("experiments/results/precision-cpu.json"))
def cli(**params):
    """bf16 against fp32: evaluation agreement and training over seeds."""
    from types import SimpleNamespace

    from trainer.distributed import resolve_device
    from trainer.precision import resolve

    a = SimpleNamespace(**params)
    a.settings = [s.name for s in common.parse_settings(a.settings)]
    a.train_setting = common.parse_settings(a.train_setting)[0].name
    if a.train_setting not in a.settings:
        a.settings.append(a.train_setting)
    a.seeds = common.parse_seeds(a.seeds)
    a.shards = a.shards or a.out / "shards"
    resolve("bf16", resolve_device(a.device))      # nothing to compare on a device without bf16: one line, exit 2
    a.budget = common.Budget.of(a)     # each run's precision is set per run (``budget``); --precision is not used
    run(a)
    return 0


def run(a) -> None:
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_glob, val_globs = prepare(a)
    shards_s = time.time() - t0
    seconds = train_all(a, train_glob)
    t0 = time.time()
    evaluate_all(a, train_glob, val_globs)
    seconds.update({"evaluation": time.time() - t0, "shards": shards_s})
    res = collect(a)
    text = render(a, res, seconds)
    click.echo(text)
    from docsgen.readme_block import save
    save(a.publish, text, "experiments/precision.py", _ARGV, results=res)
    runs = [run_folder(a, p, s) for s in a.seeds for p in PRECISIONS]
    common.write_meta(a.publish, {
        "experiment": "precision", "arch": a.arch, "weights": Path(a.weights).name, "settings": a.settings,
        "methods": ["expert"], "seeds": a.seeds, "precision": list(PRECISIONS), "train_setting": a.train_setting,
        "train_per_class": a.train_per_class, "val_per_class": a.val_per_class, "subset_seed": a.subset_seed,
        "layout": "split", "shard_size": a.shard_size, "selection": "last epoch",
        "seconds": {k: round(v) for k, v in seconds.items()}}, a.budget, runs)


_ARGV: list[str] = []     # the command line the results file records


def main(argv=None) -> int:
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    return run_click(cli, _ARGV, "experiments/precision.py")


if __name__ == "__main__":
    sys.exit(main())
