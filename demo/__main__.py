"""`make demo`: the whole system end to end, on the embedded default or on your data.

    python -m demo                                    # scikit-image photos + EfficientNet-Lite0
    python -m demo --data /imagenet-style --weights model.pth --arch mobilenet_v2

Steps (each reuses what an earlier run already built or measured):
 1. data      embedded: views of scikit-image's photos; train unlabelled, val labelled by the
              model's prediction on the clean crop.  --data: DATA/train and DATA/val.
 2. shards    val: the paper's nine settings and lossless in one pass (split layout: the clean
              crop stored once); train: only the setting the models train on (pipeline.build)
 3. baseline  the pretrained model on every val setting (trainer.evaluate)
 4. train     expert and fine-tuning on one setting, same budget (trainer.train); label-free
              (--labels teacher) on the embedded data
 5. evaluate  both on every val setting: where training on one setting helps the others
 6. report    Table 1, Fig. 4 (rate-accuracy) and Fig. 5 (trainer.reports.report)

Evaluations are cached per (model bytes, shard folder content) in OUT/eval-cache
(trainer.eval_cache): a second run with nothing changed only checks and reports.
--force evaluates again.  Each step's wall time is printed at the end.
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
from pipeline.setting import PAPER, Setting, SettingError
from trainer.clitools import UserError, run_click
from trainer.config import TrainConfig
from trainer.options import click_options

ROOT = Path(__file__).resolve().parents[1]
#: the paper's nine settings (JPEG 75/10/5, JPEG 2000 75/200/400, BPG 41/46/51) and the reference
DEFAULT_SETTINGS = PAPER
SHARD_SIZE = 64


def cpu_seconds() -> float:
    """CPU time of this process and all its descendants: the finished ones (loader workers) and,
    on Linux, the live ones too (the codec jobs' process pool outlives the step)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + _live_descendants_cpu()


def _live_descendants_cpu() -> float:
    stats: dict[int, tuple[int, float]] = {}
    try:
        tick = os.sysconf("SC_CLK_TCK")
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()      # after "pid (name) "
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    except (OSError, ValueError, IndexError):
        return 0.0
    mine, todo = set(), [os.getpid()]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in mine:
                mine.add(pid)
                todo.append(pid)
    return sum(stats[pid][1] for pid in mine)


class Clock:
    """Wall and CPU time per step, printed as the demo goes and summed up at the end.  On a
    shared machine the wall time grows with the load; the CPU time does not."""

    def __init__(self):
        self.start = time.perf_counter()
        self.steps: list[tuple[str, float, float]] = []
        self._name: str | None = None
        self._t = self.start
        self._cpu = cpu_seconds()

    def step(self, name: str, title: str) -> None:
        self.done()
        click.echo(f"\n== {len(self.steps) + 1}/6 {title}")
        self._name, self._t, self._cpu = name, time.perf_counter(), cpu_seconds()

    def done(self) -> None:
        if self._name is not None:
            wall, cpu = time.perf_counter() - self._t, cpu_seconds() - self._cpu
            self.steps.append((self._name, wall, cpu))
            click.echo(f"   ({self._name}: {wall:.1f} s, CPU {cpu:.1f} s)")
            self._name = None

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    def summary(self) -> str:
        width = max(len(n) for n, _, _ in self.steps)
        lines = [f"  {i}/6 {n:<{width}} {wall:7.1f} s   CPU {cpu:7.1f} s"
                 for i, (n, wall, cpu) in enumerate(self.steps, 1)]
        return "step times (wall, and CPU summed over cores):\n" + "\n".join(lines)


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
    """(source root with train/ and val/, label mode for training).  ``teacher_model()`` gives the
    pretrained model, built only when the views need labels."""
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
    # the labels depend on the views and on the model that gave them
    stamp = src / f".labelled-{a.per_photo}-{a.seed}-{a.photos or len(PHOTOS)}-{a.arch or ''}-{safe(a.weights)}"
    if not stamp.exists():
        shutil.rmtree(src, ignore_errors=True)
        (src / "train").parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(train, src / "train")
        counts = label_by_model(val_unlabelled, src / "val", teacher_model())
        click.echo(f"   val views labelled by the pretrained model on the clean crop: {len(counts)} classes, "
                   f"{sum(counts.values())} images")
        stamp.touch()
    else:
        click.echo(f"   views and their labels from an earlier run: reused ({src})")
    return src, "teacher"


def safe(text: str | None) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (text or "DEFAULT"))[-60:]


#: what a reused run must agree on with this demo's request (else it is trained again)
RUN_KEYS = ("method", "arch", "weights", "labels", "alpha", "lr", "epochs", "batch_size", "seed", "steps_per_epoch",
            "val_shards")


def run_state(folder: Path, config) -> str:
    """"complete" (reuse it), "partial" (resume it), "other" (a run of other epochs, lr ...:
    train again) or "none"."""
    from trainer.rundir import RunDir

    from trainer.distributed import resolve_device
    from trainer.precision import resolve

    run = RunDir(folder)
    if not run.is_run():
        return "none"
    saved = run.args()
    wanted = config.resolved()
    if not saved or any(saved.get(k) != getattr(wanted, k) for k in RUN_KEYS):
        return "other"
    # args.json records the precision used (fp32 | bf16); one from before the option has none
    if saved.get("precision", "fp32") != resolve(wanted.precision, resolve_device(wanted.device)).name:
        return "other"
    return "complete" if run.complete(config.epochs) else "partial"


#: the options that are TrainConfig's fields (made by trainer.options from them), with the demo's
#: defaults and the help that differs
TRAINING = {"weights": {"help": "Pretrained weights: a file or a torchvision weights name (default: DEFAULT, the "
                                "embedded EfficientNet-Lite0 file)."},
            "arch": {"default": None, "help": "Architecture (default efficientnet_lite0)."},
            "epochs": {"default": 3},
            "lr": {"default": 1e-4, "help": "Higher than the paper's 1e-5: the demo trains minutes, not days."},
            "alpha": {"default": 1e-2},
            "threads": {"help": "torch CPU threads (default: all cores)."},
            "workers": {"default": 2, "help": "Loader processes."}}


def training_options(*names: str):
    return click_options(TrainConfig, only=names, override={n: TRAINING[n] for n in names if n in TRAINING},
                         check=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", default=None, help="ImageNet-style folder with train/ and val/ (default: embedded photos).")
@training_options("weights", "arch")
@click.option("--out", default="runs/demo", type=click.Path(file_okay=False, path_type=Path), show_default=True)
@click.option("--settings", default=DEFAULT_SETTINGS, show_default=True,
              help="Comma-separated settings to evaluate on (val shards only); paper = lossless and the paper's nine.")
@click.option("--train-setting", default="j2k-200", show_default=True,
              help="The setting expert and fine-tuning train on (the only one with train shards).")
@training_options("epochs", "lr", "alpha", "batch_size", "threads", "precision", "steps_per_epoch")
@click.option("--per-photo", type=click.IntRange(min=1), default=24, show_default=True, help="Views per embedded photo.")
@click.option("--photos", type=click.IntRange(min=1), default=None, help="Only the first N embedded photos (quick runs).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Images per split (quick runs).")
@click.option("--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True)
@training_options("workers", "seed")
@click.option("--force", is_flag=True, help="Evaluate again even what the evaluation cache holds (shards and "
                                            "complete runs are still reused: delete --out to start over).")
@click.option("--readme", is_flag=True, help="Also refresh the README's demo table and plot.")
@training_options("progress")
def cli(**params):
    """`make demo`: the whole flow, on the embedded default or on your data."""
    run_demo(SimpleNamespace(**params))
    return 0


def tar_stamps(folders: list[Path]) -> dict[Path, tuple[int, int]]:
    """(size, mtime) of every shard in ``folders``: what a build rewrote shows up as a change."""
    out = {}
    for folder in folders:
        for tar in folder.glob("shard-*.tar"):
            st = tar.stat()
            out[tar] = (st.st_size, st.st_mtime_ns)
    return out


def build_shards(a, src: Path, shards: Path, settings: list[Setting], train_setting: Setting) -> None:
    """Val: every setting in one pass (each image cropped once; split layout, so the clean crop
    is stored once, in val/lossless); train: the training setting alone."""
    from pipeline.build import build

    folders = [shards / "val" / s.name for s in settings] + [shards / "val" / "lossless",
                                                              shards / "train" / train_setting.name]
    before = tar_stamps(folders)
    common = dict(shard_size=SHARD_SIZE, jobs=a.jobs, limit=a.limit, progress=a.progress)
    build(src, "val", settings, shards, layout="split", **common)
    build(src, "train", [train_setting], shards, layout="pair", **common)
    after = tar_stamps(folders)
    made = sum(1 for t, stamp in after.items() if before.get(t) != stamp)
    click.echo(f"   {len(settings)} val setting(s) + train {train_setting.name}: "
               + (f"made {made} shard(s), reused {len(after) - made}" if made else f"all {len(after)} shards reused"))


def evaluate_cached(config, what: str) -> None:
    """trainer.evaluate, saying what the evaluation cache reused."""
    from trainer import evaluate
    from trainer.eval_cache import Summary

    summary = Summary()
    evaluate(config, summary=summary)
    n = len(summary.reused) + len(summary.computed)
    if summary.reused and not summary.computed:
        click.echo(f"   {what}: all {n} evaluations reused from {summary.folder} (unchanged model and shards)")
    else:
        click.echo(f"   {what}: evaluated {len(summary.computed)} (model, setting) pair(s), reused "
                   f"{len(summary.reused)}" + (" (--force)" if summary.force else ""))


def caption(labels: str, train_setting: str, n_val: int | None) -> str:
    images = f"; {n_val} images per setting" if n_val else ""
    if labels == "teacher":
        meaning = ("top-1 here = agreement with the pretrained model's answer on the uncompressed crop, as the "
                   f"embedded photos have no labels{images}. Fine-tuning and expert trained label-free")
    else:
        meaning = f"top-1 = plain accuracy against the dataset's labels{images}. Fine-tuning and expert trained"
    return (f"{meaning} on {train_setting} only, then evaluated on every setting. Dotted lines: each model on "
            "the uncompressed crops (lossless).")


def run_demo(a) -> None:
    clock = Clock()
    import torch

    from trainer.reports.report import report
    from trainer import EvalConfig, TrainConfig, train
    from trainer.models import build_model
    from trainer.rundir import RunDir

    torch.set_num_threads(a.threads or max(1, os.cpu_count() or 1))
    arch = a.arch or ("efficientnet_lite0" if not a.weights or not a.data else "mobilenet_v2")
    weights = a.weights or "DEFAULT"
    a.out.mkdir(parents=True, exist_ok=True)
    shards, runs, reports = a.out / "shards", a.out / "runs", a.out / "reports"
    results = reports / "results.json"
    cache_dir = str(a.out / "eval-cache")

    clock.step("data", f"data ({'embedded scikit-image photos' if not a.data else a.data}); model {arch} ({weights})")
    from trainer.distributed import resolve_device
    from trainer.precision import resolve
    prec = resolve(a.precision, resolve_device("auto"))     # the device the demo's runs and evaluations use
    click.echo(f"   {prec.describe()}")
    src, labels = prepare_data(a, lambda: build_model(arch, weights))

    clock.step("shards", "shards: val for every setting in one pass, train for the training setting only")
    settings = available_settings(a.settings)
    if not settings:
        raise UserError(f"--settings {a.settings}: no codec of these works here")
    names = [s.name for s in settings]
    train_setting = Setting.parse(a.train_setting if a.train_setting in names else names[-1])
    if train_setting.name != a.train_setting:
        click.echo(f"   --train-setting {a.train_setting} is not among the settings built here: training on "
                   f"{train_setting.name}")
    build_shards(a, src, shards, settings, train_setting)
    val_globs = [str(shards / "val" / n / "shard-*.tar") for n in names]
    common = dict(workers=a.workers, progress=a.progress, limit=a.limit, cache_dir=cache_dir, force=a.force,
                  precision=a.precision)

    clock.step("baseline", "the pretrained model on every setting")
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    evaluate_cached(EvalConfig(arch=arch, weights=[weights], shards=val_globs, out=str(results), overwrite=True,
                               **common), "pretrained")

    clock.step("train", f"expert training and fine-tuning on {train_setting.name} (labels: {labels}), same budget")
    checkpoints = []
    for method in ("expert", "finetune"):
        out = runs / f"{method}-{train_setting.name}"
        # no validation during training: the val images are what the report scores, so picking
        # an epoch on them would flatter both methods; each is scored after its last epoch (the
        # same budget for both), and 2 cores are spared the extra passes
        config = TrainConfig(shards=[str(shards / "train" / train_setting.name / "shard-*.tar")],
                             method=method, arch=arch, weights=weights, labels=labels, lr=a.lr,
                             alpha=a.alpha if method == "expert" else None,       # fine-tuning has none
                             epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, out=str(out),
                             workers=a.workers, resume="auto", steps_per_epoch=a.steps_per_epoch,
                             precision=a.precision, progress=a.progress)
        state = run_state(out, config)
        if state == "complete":
            click.echo(f"   {out} is complete: reused")
        else:
            if state == "other":
                click.echo(f"   {out} was trained with other options: training again")
                shutil.rmtree(out)
            train(config)
        checkpoints.append(str(RunDir(out).last))

    clock.step("evaluate", "the trained models on every setting")
    evaluate_cached(EvalConfig(checkpoints=checkpoints, shards=val_globs, out=str(results), **common),
                    "expert and fine-tuning")

    clock.step("report", "report")
    n_val = _count(shards / "val" / "lossless")
    report([results], shards, reports, runs=runs, caption=caption(labels, train_setting.name, n_val))
    table = (reports / "fig4_rate_accuracy.md").read_text()
    plot = next(iter(sorted(reports.glob("fig4_*.png"))), None)
    clock.done()
    elapsed = clock.total
    click.echo("\n" + table)
    click.echo(f"plot: {plot}\nreport (Table 1, Fig. 4, Fig. 5): {reports / 'report.md'}\n")
    click.echo(clock.summary())
    click.echo(f"demo wall time: {elapsed / 60:.1f} min ({elapsed:.0f} s)")
    atomic_write_json(reports / "wall_time.json", {"seconds": elapsed, "cpu_count": os.cpu_count(),
                                                   "steps": {n: {"wall_s": w, "cpu_s": c} for n, w, c in clock.steps}})
    if a.readme:
        update_readme(plot, table, elapsed, clock.steps, a, arch, labels, train_setting.name, prec.name)


def _count(folder: Path) -> int | None:
    from pipeline.manifest import Manifest, ManifestError

    try:
        return int(Manifest.load(folder)["count"])
    except (ManifestError, KeyError, TypeError, ValueError):
        return None


def main(argv=None) -> int:
    return run_click(cli, argv, "python -m demo")


def _table_only(markdown: str) -> str:
    """The rate-accuracy table without its '## ...' heading (the README has its own)."""
    return "\n".join(line for line in markdown.strip().splitlines() if not line.startswith("#")).strip()


def update_readme(plot: Path, table: str, elapsed: float, steps, a, arch: str, labels: str,
                  train_setting: str, precision: str) -> None:
    """docs/demo-results.json (what the README's demo block is rendered from) and the plot; then
    the block itself (docsgen/readme_block.py; the demo runs from the checkout, as ``python -m demo``)."""
    from docsgen.readme_block import BLOCKS, refresh, save

    docs = ROOT / "docs"
    atomic_write(docs / "demo_rate_accuracy.png", plot.read_bytes())
    per_step = ", ".join(f"{name} {wall:.0f} s" for name, wall, _ in steps)
    block = (f"Generated by `make demo-docs` ({arch}; expert and fine-tuning trained on "
             f"`{train_setting}` for {a.epochs} epochs, lr {a.lr:g}, α {a.alpha:g}, labels: {labels}; all three "
             f"models evaluated on every setting; precision {precision}; wall time {elapsed / 60:.1f} min on "
             f"{os.cpu_count()} CPU cores: "
             f"{per_step}). Top-1 in %.\n\n{_table_only(table)}\n\n![rate-accuracy](docs/demo_rate_accuracy.png)")
    save(docs / "demo-results.json", block, "-m", ["demo", *sys.argv[1:]])
    refresh([b for b in BLOCKS if b.name == "demo"], ROOT)
    click.echo("docs/demo-results.json, the README.md demo block and docs/demo_rate_accuracy.png refreshed")


if __name__ == "__main__":
    sys.exit(main())
