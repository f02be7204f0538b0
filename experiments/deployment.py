"""What a deployer can serve: specialists (expert training on one setting) and one generalist
(expert training on several settings mixed in every batch), each with the normalisation
layers trained (``--bn train``, the paper's code) or frozen (``--bn frozen``), scored on
the clean images and on every setting of the paper, beside the pretrained model.

    python experiments/deployment.py                     # the CPU budget of docs/deployment.md
    SEEDS="0 1 2" TRAIN_PER_CLASS=300 experiments/deployment.sh

The data: seeded, class-balanced subsets of SRC (``experiments/subsets.py``), in split layout
(the clean crops stored once, in ``lossless/``; every setting of a split shares them and the
teacher cache built on them).  Train shards: lossless and the specialists' settings; val
shards: lossless and the paper's nine settings.  Models (per seed and ``--bn`` mode): one
specialist per setting of ``--specialists`` and one generalist on lossless + those settings
with as many optimisation steps as one specialist.  No validation during training: the
model scored is the last epoch's (the val images only ever score).  Every model is evaluated
on all ten val settings.

Outputs: OUT/results.json (``trainer.evaluation`` rows), the committed ``--publish`` file (the same
rows with each model's kind and ``--bn`` mode, paths relative to the file) and its meta file,
and ``--figure`` (rate-accuracy curves).  ``experiments/summarize.py --view deployment``
renders the table of docs/deployment.md.  Every step reuses finished work.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write_json  # noqa: E402
from pipeline.setting import PAPER_SETTINGS  # noqa: E402
from trainer.clitools import UserError, run_click  # noqa: E402
from trainer.rundir import RunDir  # noqa: E402
from trainer.vocab import BN_MODES  # noqa: E402

from experiments import common  # noqa: E402

#: the model kinds of a deployment results file (its rows' ``model``)
PRETRAINED, SPECIALIST, GENERALIST, BN_STATS = "pretrained", "specialist", "generalist", "bn-stats"


@dataclass(frozen=True)
class Generalist:
    """One way of training the generalist (``--generalists``): how many optimisation steps an
    epoch has, as a multiple of one specialist's, and its setting weights."""
    name: str
    suffix: str            # in the run folder's name ("" for the original, equal-steps one)
    exposure: bool         # True: each setting gets as many steps as its specialist (steps x settings)
    harsh: bool            # True: weighted by --harsh-weights, else by --setting-weights
    help: str


GENERALISTS = {g.name: g for g in (
    Generalist("equal-steps", "", False, False, "as many steps in all as one specialist"),
    Generalist("equal-exposure", "-exposure", True, False,
               "as many steps per setting as its specialist (steps x settings)"),
    Generalist("harsh", "-harsh", True, True, "equal exposure, the compressed settings weighted by --harsh-weights"),
)}


def run_name(kind: str, bn: str, seed: int) -> str:
    """``expert-j2k-200-bn-frozen-s0`` (a specialist) or ``expert-generalist-bn-train-s1``."""
    return f"expert-{kind}-bn-{bn}-s{seed}"


def bn_stats_name(setting: str) -> str:
    """``bn-stats-jpeg-10``: the pretrained weights with that setting's BN statistics (AdaBN: no
    gradient step, so no seed)."""
    return f"bn-stats-{setting}"


def prepare(a, build: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """Subsets and split-layout shards (``build``: made when missing); ({train setting: glob},
    {val setting: glob}).  With ``--select-per-class``, also the calibration split (train images
    outside the train subset, every setting of the paper) in ``a.select_root``."""
    train_name = common.subset_name(a.src, "train", a.train_per_class, a.subset_seed)
    val_name = common.subset_name(a.src, "val", a.val_per_class, a.subset_seed)
    train_root, a.val_root = a.shards / train_name / "mixed", a.shards / val_name
    a.select_root = (a.shards / common.subset_name(a.src, "select", a.select_per_class, a.subset_seed,
                                                   tag=f"not-{train_name}")) if a.select_per_class else None
    trained = [common.LOSSLESS] + [s for s in a.specialists if s != common.LOSSLESS]
    globs = ({s: common.shard_glob(train_root, "train", s) for s in trained},
             {s: common.shard_glob(a.val_root, "val", s) for s in PAPER_SETTINGS})
    if not build:
        common.check_prebuilt({**globs[0], **{f"val {k}": v for k, v in globs[1].items()}})
        return globs
    train_src, val_src, subsets, jobs = common.source_subsets(a, train_name, val_name)
    common.build_shards(val_src, "val", list(PAPER_SETTINGS), a.val_root, a.val_shard_size, jobs, layout="split")
    common.build_shards(train_src, "train", trained, train_root, a.shard_size, jobs, layout="split")
    if a.select_root is not None:
        select_src = common.select_subset(a.src, subsets, train_src, a.select_per_class, a.subset_seed, val_src)
        common.build_shards(select_src, "train", list(PAPER_SETTINGS), a.select_root, a.val_shard_size, jobs,
                            layout="split")
    return globs


def specialist_steps(train_globs: dict[str, str], specialists: list[str], budget: common.Budget) -> int:
    """The optimisation steps of one specialist's epoch (the fewest, should a codec have failed on
    an image): the generalist's epoch is capped to it."""
    from trainer.data import batches_per_epoch, group_shards
    return min(batches_per_epoch(group_shards(train_globs[s])[0].count, budget.batch, 1, budget.train_limit)
               for s in specialists)


def models(a) -> list[dict]:
    """Every trained model of the experiment: kind, setting (specialists), --bn, seed, run folder
    (the BN-statistics experts first: they take seconds and have no seed)."""
    out = [{"model": BN_STATS, "setting": s, "bn": None, "seed": None, "variant": None,
            "run": a.out / "runs" / bn_stats_name(s)} for s in (a.specialists if a.bn_stats else [])]
    for seed in a.seeds:
        for bn in a.bn:
            # the generalists first: they alone serve every rate, so a run cut short should have one
            for g in a.generalists:
                out.append({"model": GENERALIST, "setting": None, "bn": bn, "seed": seed, "variant": g.name,
                            "run": a.out / "runs" / run_name(GENERALIST + g.suffix, bn, seed)})
            for s in a.specialists:
                out.append({"model": SPECIALIST, "setting": s, "bn": bn, "seed": seed, "variant": None,
                            "run": a.out / "runs" / run_name(s, bn, seed)})
    return out


def train_one(a, m: dict, train_globs: dict[str, str]) -> None:
    """Train one model of :func:`models` (or reuse it when complete)."""
    t0 = time.time()
    if m["model"] == BN_STATS:
        if not RunDir(m["run"]).last.is_file():
            from trainer import adapt_bn
            adapt_bn.run(a.weights, a.arch, [train_globs[m["setting"]]], m["run"], a.budget.batch,
                         a.budget.train_limit, device=a.device)
    elif m["model"] == SPECIALIST:
        common.train_run(m["run"], train_globs[m["setting"]], "expert", "dataset", m["seed"], a.arch, a.weights,
                         a.budget, bn=m["bn"])
    else:
        g = GENERALISTS[m["variant"]]
        mixed = [train_globs[common.LOSSLESS]] + [train_globs[s] for s in a.specialists]
        steps = specialist_steps(train_globs, a.specialists, a.budget) * (len(mixed) if g.exposure else 1)
        weights = (a.harsh_weights or harsh_weights(a.specialists)) if g.harsh else (a.setting_weights or None)
        common.train_run(m["run"], mixed, "expert", "dataset", m["seed"], a.arch, a.weights, a.budget, bn=m["bn"],
                         steps_per_epoch=steps, setting_weights=weights)
    click.echo(f"{m['run'].name}: trained in {time.time() - t0:.0f} s", err=True)


def harsh_weights(specialists: list[str]) -> str:
    """The harsh generalist's default shares: each compressed setting three times lossless."""
    return ",".join([f"{common.LOSSLESS}=1"] + [f"{s}=3" for s in specialists])


def publish(a, val_globs: dict[str, str]) -> Path:
    """The committed results file: OUT/results.json's rows of this experiment's models, each with
    its kind (``model``), ``bn`` mode, seed and training settings (read from the checkpoint),
    paths relative to the file (``trainer.evaluation.portable_rows``)."""
    from trainer import checkpoint as ck
    from trainer.evaluation import PATH_COLUMNS, portable_rows

    rows = json.loads(a.results.read_text(encoding="utf-8"))
    here = a.results.resolve().parent

    def local(p: str) -> str:      # a row's path as written (absolute, or relative to the results file)
        return os.path.realpath(p if os.path.isabs(p) else os.path.join(here, p))

    by_ckpt = {}
    for m in models(a):
        path = RunDir(m["run"]).last
        if not path.is_file():       # not trained yet
            continue
        c = ck.load(path)
        by_ckpt[os.path.realpath(path)] = {
            "model": m["model"], "bn": None if m["model"] == BN_STATS else ck.bn_mode(c), "seed": m["seed"],
            **({"variant": m["variant"]} if m["variant"] else {}),
            "trained_settings": [e["setting"] for e in ck.training_settings(c)]}
    out = []
    for r in rows:
        if r.get("group") is not None or r.get("setting") not in val_globs:
            continue
        r = {**r, **{k: local(r[k]) for k in PATH_COLUMNS if isinstance(r.get(k), str) and k != "weights"}}
        if r.get("method") == "pretrained" and r.get("arch") == a.arch:
            extra = {"model": PRETRAINED, "bn": None, "seed": None, "trained_settings": []}
            r["weights"] = Path(r["weights"]).name if r.get("weights") else None
        elif r.get("checkpoint") in by_ckpt:
            extra = by_ckpt[r["checkpoint"]]
        else:
            continue
        out.append({**r, **extra})
    a.publish.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.publish, portable_rows(out, a.publish))
    return a.publish


def write_meta(a, seconds: dict | None) -> None:
    """The meta file beside the published results (``seconds``: the time each phase took; None
    keeps what an earlier invocation recorded)."""
    steps = specialist_steps(a.train_globs, a.specialists, a.budget)
    common.write_meta(a.publish, {
        "experiment": "deployment", "arch": a.arch, "weights": Path(a.weights).name,
        "settings": list(PAPER_SETTINGS), "methods": ["expert"], "bn": a.bn,
        "seeds": [s for s in a.seeds if any(RunDir(m["run"]).last.is_file() for m in models(a) if m["seed"] == s)],
        "models_trained": [m["run"].name for m in models(a) if RunDir(m["run"]).last.is_file()],
        "specialists": a.specialists, "generalist": [common.LOSSLESS] + a.specialists,
        "generalists": {g.name: {"steps_per_epoch": steps * (1 + len(a.specialists) if g.exposure else 1),
                                 "setting_weights": ((a.harsh_weights or harsh_weights(a.specialists)) if g.harsh
                                                     else a.setting_weights or "equal")} for g in a.generalists},
        "bn_stats": [bn_stats_name(s) for s in a.specialists] if a.bn_stats else [],
        "select_per_class": a.select_per_class,
        "setting_weights": a.setting_weights or "equal", "generalist_steps_per_epoch": steps,
        "train_per_class": a.train_per_class, "val_per_class": a.val_per_class, "subset_seed": a.subset_seed,
        "order": "mixed", "layout": "split", "shard_size": a.shard_size, "selection": "last epoch",
        **({"seconds": seconds} if seconds is not None else {})}, a.budget, [m["run"] for m in models(a)])


def figure(results: Path, out: Path) -> Path:
    """Rate-accuracy curves from a published results file: top-1 against bits per pixel per codec,
    for the pretrained model, each specialist on its own setting and the generalists (one line
    per --bn mode) on every setting; mean over seeds."""
    import statistics

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(Path(results).read_text(encoding="utf-8"))
    codecs = [c for c in ("jpeg", "j2k", "bpg") if any(r["codec"] == c for r in rows)]
    lossless = {}
    fig, axes = plt.subplots(1, len(codecs), figsize=(4.2 * len(codecs), 3.6), sharey=True, squeeze=False)
    axes = list(axes[0])
    for ax, codec in zip(axes, codecs):
        def curve(pick, label, style):
            pts: dict[str, list] = {}
            for r in rows:
                if pick(r) and (r["codec"] == codec or r["setting"] == common.LOSSLESS):
                    pts.setdefault(r["setting"], []).append((r["mean_bpp"] if r["codec"] == codec else None, r["top1"]))
            xs = []
            for s, v in pts.items():
                bpp = next((b for b, _ in v if b is not None), None)
                top1 = statistics.mean(t for _, t in v)
                if s == common.LOSSLESS:
                    lossless[label] = top1
                    continue
                xs.append((bpp, top1, s))
            xs.sort()
            if xs:
                ax.plot([x for x, _, _ in xs], [y for _, y, _ in xs], style, label=label)
        curve(lambda r: r["model"] == PRETRAINED, "pretrained", "k-o")
        for bn, style in (("train", "C0-s"), ("frozen", "C1-^")):
            curve(lambda r, bn=bn: r["model"] == GENERALIST and r["bn"] == bn                 # the original one
                  and r.get("variant") in (None, "equal-steps"), f"generalist (bn {bn})", style)
        for bn, marker in (("train", "C2*"), ("frozen", "C3x")):
            pts = [(r["mean_bpp"], r["top1"]) for r in rows if r["model"] == SPECIALIST and r["bn"] == bn
                   and r["codec"] == codec and r["trained_settings"] == [r["setting"]]]
            if pts:
                by = {}
                for b, t in pts:
                    by.setdefault(b, []).append(t)
                ax.plot(list(by), [statistics.mean(v) for v in by.values()], marker, markersize=11, linestyle="none",
                        label=f"specialist on its setting (bn {bn})")
        if "pretrained" in lossless:
            ax.axhline(lossless["pretrained"], color="k", linestyle=":", linewidth=1, label="pretrained on lossless")
        ax.set_xscale("log")
        ax.set_title(codec)
        ax.set_xlabel("bits per pixel")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%, 1000-way) on the val images")
    handles = {}
    for ax in axes:       # one legend for every panel's lines (a specialist shows on its codec's panel only)
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    axes[-1].legend(list(handles.values()), list(handles), fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common.options(seeds="0 1", train_per_class=100, val_per_class=30, shard_size=250)
@click.option("--specialists", envvar="SPECIALISTS", default="jpeg-10 j2k-200 bpg-46",
              help="One specialist per setting; the generalist trains on lossless + these.")
@click.option("--bn", "bn_modes", envvar="BN", default="train frozen", help="The --bn modes every model is trained with.")
@click.option("--setting-weights", envvar="SETTING_WEIGHTS", default="",
              help="The equal-steps and equal-exposure generalists' shares (SETTING=W,...; default equal).")
@click.option("--generalists", envvar="GENERALISTS", default="equal-steps",
              help=f"The generalists to train: {', '.join(f'{n} ({g.help})' for n, g in GENERALISTS.items())}.")
@click.option("--harsh-weights", envvar="HARSH_WEIGHTS", default="",
              help="The harsh generalist's shares (default: lossless=1, each specialist setting 3).")
@click.option("--bn-stats/--no-bn-stats", envvar="BN_STATS", default=False,
              help="Also one BN-statistics expert per specialist setting (trainer.adapt_bn on the pretrained weights).")
@click.option("--select-per-class", envvar="SELECT_PER_CLASS", type=click.IntRange(min=0), default=0,
              help="Also build a calibration split of this many train images per class outside the train subset "
                   "(every setting), for receiver.calibrate and experiments/mixed_traffic.py; 0: none.")
@click.option("--val-shard-size", envvar="VAL_SHARD_SIZE", type=click.IntRange(min=1), default=100)
@click.option("--out", envvar="OUT", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/experiments/deployment"))
@click.option("--shards", envvar="SHARDS", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Shard root (default OUT/shards); the subsets' links go to SHARDS/../subsets.")
@click.option("--publish", envvar="PUBLISH", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("experiments/results/deployment-cpu.json"))
@click.option("--figure", "figure_path", envvar="FIGURE", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docs/deployment.png"))
@click.option("--figure-only", is_flag=True, help="Only draw --figure from the --publish file.")
@click.option("--report-only", is_flag=True,
              help="Only publish OUT/results.json's rows, the meta file, the figure and the table (no training, "
                   "no evaluation).")
def cli(**params):
    """Specialists and a generalist, --bn train and frozen, on all ten settings."""
    from types import SimpleNamespace
    a = SimpleNamespace(**params)
    if a.figure_only:
        if not a.publish.exists():
            raise UserError(f"{a.publish}: no such results file (run the experiment first)")
        click.echo(figure(a.publish, a.figure_path))
        return 0
    a.specialists = [s.name for s in common.parse_settings(a.specialists)]
    if common.LOSSLESS in a.specialists:
        raise UserError("SPECIALISTS: lossless is the generalist's own; name compressed settings")
    a.bn = a.bn_modes.replace(",", " ").split()
    bad = [b for b in a.bn if b not in BN_MODES]
    if bad or not a.bn:
        raise UserError(f"BN {a.bn_modes!r}: one or more of {', '.join(BN_MODES)}")
    a.seeds = common.parse_seeds(a.seeds)
    names = a.generalists.replace(",", " ").split()
    unknown = [n for n in names if n not in GENERALISTS]
    if unknown or not names:
        raise UserError(f"GENERALISTS {a.generalists!r}: one or more of {', '.join(GENERALISTS)}")
    a.generalists = [GENERALISTS[n] for n in names]
    a.shards = a.shards or a.out / "shards"
    a.results = a.out / "results.json"
    a.budget = common.Budget.of(a)
    run(a)
    return 0


def report_only(a) -> None:
    a.train_globs, val_globs = prepare(a, build=False)
    publish(a, val_globs)
    write_meta(a, None)
    finish(a)


def finish(a) -> None:
    figure(a.publish, a.figure_path)
    from experiments.summarize import generate
    click.echo(generate([a.publish], view="deployment"))


def run(a) -> None:
    """Shards, then model by model (seed by seed, in --bn order): train it, evaluate it and
    publish what is done, then the table and the figure."""
    a.out.mkdir(parents=True, exist_ok=True)
    if a.report_only:
        return report_only(a)
    seconds = {"training": 0, "evaluation": 0}
    t0 = time.time()
    a.train_globs, val_globs = prepare(a)
    seconds["shards"] = round(time.time() - t0)
    t0 = time.time()
    common.evaluate_pretrained(a.results, a.arch, a.weights, val_globs, a.device, workers=a.workers,
                               precision=a.precision)
    seconds["evaluation"] += round(time.time() - t0)
    for m in models(a):
        t0 = time.time()
        train_one(a, m, a.train_globs)
        seconds["training"] += round(time.time() - t0)
        t0 = time.time()
        common.evaluate_models(a.results, [str(RunDir(m["run"]).last)], val_globs, a.device, workers=a.workers)
        seconds["evaluation"] += round(time.time() - t0)
        click.echo(f"{m['run'].name}: evaluated in {time.time() - t0:.0f} s", err=True)
        publish(a, val_globs)
        write_meta(a, seconds)
    finish(a)


def main(argv=None) -> int:
    return run_click(cli, argv, "experiments/deployment.py")


if __name__ == "__main__":
    sys.exit(main())
