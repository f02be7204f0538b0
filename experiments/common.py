"""What the experiment scripts share: method lists, run folders, reuse of finished work, the
training call, the shards of a subset and the evaluation of a list of models.

Every step calls the Python APIs (``pipeline.build.build``, ``trainer.train``,
``trainer.evaluate``), never a command line, and reuses what is already done: shards
(the pipeline skips complete shards), complete runs (``complete``) and models whose rows are
already in the results file and newer than their checkpoint (``evaluated``).
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from pipeline.provenance import environment, portable_path
from pipeline.setting import Setting, SettingError
from trainer import methods
from trainer.clitools import UserError
from trainer.config import TrainConfig
from trainer.options import click_options
from trainer.rundir import RunDir

#: the settings of every experiment's val split besides the trained ones (B-clean = lossless)
LOSSLESS = "lossless"

#: the training options every experiment takes: TrainConfig's own fields (their types, ranges
#: and help), with the experiments' defaults
TRAINING = ("weights", "arch", "epochs", "train_limit", "batch_size", "lr", "alpha", "device", "precision",
            "workers")
TRAINING_DEFAULTS = {
    "weights": {"default": "../shared/weights/mobilenet_v2_imagenet.pth"},
    "arch": {"default": "mobilenet_v2"},
    "epochs": {"default": 1},
    "train_limit": {"help": "Samples per epoch (default: the whole train subset)."},
    "batch_size": {"default": 32, "flag": "--batch"},
    "lr": {"default": 1e-4, "help": "Learning rate of fine-tuning and expert training."},
    "alpha": {"default": 1e-2, "help": "KL weight of expert training."},
    "workers": {"default": 1, "help": "Loader processes per run (and per evaluation)."},
}


def options(seeds: str, train_per_class: int, val_per_class: int, shard_size: int):
    """The options every experiment script takes, declared once here, each also read from the
    environment variable its flag names (the shell scripts set them: SRC, SEEDS, EPOCHS,
    BATCH ...): the images (``--src``), the subsets drawn from them and their shards
    (``--seeds``, ``--train-per-class``, ``--val-per-class``, ``--subset-seed``,
    ``--shard-size``, ``--jobs``) with the script's defaults, and the model and the training
    budget (:data:`TRAINING`: TrainConfig's fields)."""
    own = [click.option("--src", envvar="SRC", type=click.Path(path_type=Path), default=Path("../shared/imagenette")),
           click.option("--seeds", envvar="SEEDS", default=seeds),
           click.option("--train-per-class", envvar="TRAIN_PER_CLASS", type=click.IntRange(min=1),
                        default=train_per_class, help="Train images drawn from each class."),
           click.option("--val-per-class", envvar="VAL_PER_CLASS", type=click.IntRange(min=1), default=val_per_class,
                        help="Val images drawn from each class (the same for every model)."),
           click.option("--subset-seed", envvar="SUBSET_SEED", type=click.IntRange(min=0), default=0),
           click.option("--shard-size", envvar="SHARD_SIZE", type=click.IntRange(min=1), default=shard_size),
           click.option("--jobs", envvar="JOBS", type=click.IntRange(min=1), default=None, help="Default: all cores."),
           click_options(TrainConfig, only=TRAINING, override=TRAINING_DEFAULTS, envvar=True, check=True)]

    def decorate(fn):
        for o in reversed(own):
            fn = o(fn)
        return fn
    return decorate


def parse_bn_modes(text: str) -> list[str]:
    """"train frozen" -> the ``--bn`` modes every model is trained with (``trainer.vocab.BN_MODES``)."""
    from trainer.vocab import BN_MODES
    modes = text.replace(",", " ").split()
    bad = [b for b in modes if b not in BN_MODES]
    if bad or not modes or len(set(modes)) != len(modes):
        raise UserError(f"BN {text!r}: one or more of {', '.join(BN_MODES)}, each once")
    return modes


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
    if not out:
        raise UserError("METHODS: give at least one method")
    return out


def parse_settings(text: str) -> list[Setting]:
    try:
        settings = Setting.parse_list(text.replace(",", " ").split())
    except SettingError as exc:
        raise UserError(f"SETTINGS: {exc}") from None
    if not settings:
        raise UserError("SETTINGS: give at least one setting")
    return settings


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"SEEDS {text!r}: whole numbers") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UserError(f"SEEDS {text!r}: one or more whole numbers >= 0")
    return seeds


def run_dir(out: Path, key: str, setting: str, seed: int) -> Path:
    """OUT/runs/<method key>-<setting>-s<seed> (``expert+teacher`` is spelt ``expert-teacher``)."""
    return Path(out) / "runs" / f"{key.replace(methods.TEACHER_LABELS, '-teacher')}-{setting}-s{seed}"


def check_validation(run: Path, val_glob: str | None) -> None:
    """A one-line error when the run folder's args.json names other validation shards than
    ``val_glob`` (None: none)."""
    args = RunDir(run).args_json
    if not args.exists():
        return
    try:
        had = json.loads(args.read_text(encoding="utf-8")).get("val_shards") or None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise UserError(f"{args}: not a readable run record ({exc}); remove {run} to train it again") from None
    want = [val_glob] if val_glob else None
    if had != want:
        raise UserError(f"{run}: trained with validation shards {had or 'none'}, this experiment chooses on "
                        f"{want or 'none'}; remove the run folder or choose another OUT")


def check_precision(run: Path, precision: str) -> None:
    """A one-line error when the run folder's args.json says it was trained in another
    precision than ``precision`` (fp32 | bf16); a run from before the option records none and
    is kept."""
    args = RunDir(run).args_json
    if not args.exists():
        return
    try:
        had = json.loads(args.read_text(encoding="utf-8")).get("precision")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise UserError(f"{args}: not a readable run record ({exc}); remove {run} to train it again") from None
    if had is not None and had != precision:
        raise UserError(f"{run}: trained in {had}, this experiment trains in {precision}; remove the run folder, "
                        f"choose another OUT or give PRECISION={had}")


@dataclass
class Budget:
    """The training budget every trained method gets (the same number of steps for all)."""
    epochs: int = 1
    train_limit: int | None = None   # samples per epoch (None: the whole train split)
    batch: int = 32
    lr: float = 1e-4
    alpha: float = 1e-2
    stab_lr: float = 1e-4
    stab_alpha: float = 5e-3
    stab_sigma: float = 4e-2
    workers: int | None = None       # loader processes (None: the trainer's default)
    device: str = "auto"
    precision: str = "auto"          # trainer.precision: auto | fp32 | bf16, training and evaluation alike

    @classmethod
    def of(cls, a, **extra) -> "Budget":
        """The budget the shared options (:func:`options`) ask for; ``extra``: the script's own fields."""
        return cls(epochs=a.epochs, train_limit=a.train_limit, batch=a.batch_size, lr=a.lr, alpha=a.alpha,
                   workers=a.workers, device=a.device, precision=a.precision, **extra)

    def hyper(self, method: str) -> dict:
        if method == "stability":
            return dict(lr=self.stab_lr, alpha=self.stab_alpha, sigma=self.stab_sigma)
        return dict(lr=self.lr, alpha=self.alpha if method == "expert" else None)


def train_run(run: Path, train_glob: str | list[str], method: str, labels: str, seed: int, arch: str, weights: str,
              budget: Budget, val_glob: str | None = None, val_limit: int | None = None, **extra) -> Path:
    """Train one run (or reuse it when complete); returns its best.pth.  ``train_glob``: one
    setting's shards, or a list (a run on several settings); ``extra``: further TrainConfig
    fields (``bn``, ``setting_weights``, ``steps_per_epoch`` ...).  A run folder that was
    trained with other validation shards is refused: its best.pth was chosen on other data."""
    from trainer import TrainConfig, train

    check_validation(run, val_glob)
    check_precision(run, used_precision(budget.precision, budget.device))
    if not RunDir(run).complete(budget.epochs):
        train(TrainConfig(
            shards=[train_glob] if isinstance(train_glob, str) else list(train_glob),
            val_shards=[val_glob] if val_glob else None, arch=arch, weights=weights,
            method=method, labels=labels, epochs=budget.epochs, train_limit=budget.train_limit, val_limit=val_limit,
            batch_size=budget.batch, seed=seed, out=str(run), resume="auto", device=budget.device,
            precision=budget.precision, progress=False,
            **({"workers": budget.workers} if budget.workers is not None else {}), **budget.hyper(method), **extra))
    return RunDir(run).best


def scored_checkpoint(run: Path, select_per_class: int) -> Path:
    """The checkpoint of a run that the experiment scores: ``best.pth`` when the run chose its
    epoch on a selection split (``select_per_class`` > 0), else ``last.pth``."""
    return RunDir(run).best if select_per_class else RunDir(run).last


def selection_protocol(select_per_class: int) -> dict | str:
    """What the results' meta file says about how the scored checkpoints were chosen."""
    from trainer.checkpoint import LAST_EPOCH
    return {"split": SELECT_SPLIT, "per_class": select_per_class} if select_per_class else LAST_EPOCH


#: the name of the selection split: train images outside the train subset (``select_subset``)
SELECT_SPLIT = "train-select"


def source_subsets(a, train_name: str, val_name: str, classes=None) -> tuple[Path, Path, Path, int]:
    """The experiment's seeded train and val subsets of ``a.src`` (folders of links under
    ``SHARDS/../subsets``; ``classes`` limits the train subset), that subsets folder and the job
    count; one line when the source has no train/ or val/."""
    from experiments.subsets import make_subset
    if not (a.src / "train").is_dir() or not (a.src / "val").is_dir():
        raise UserError(f"no {a.src}/train or {a.src}/val: set SRC=/path/to/imagenette")
    subsets = a.shards.parent / "subsets"
    train_src = make_subset(a.src, subsets / train_name, {"train": a.train_per_class}, classes=classes,
                            seed=a.subset_seed)
    val_src = make_subset(a.src, subsets / val_name, {"val": a.val_per_class}, seed=a.subset_seed)
    return train_src, val_src, subsets, a.jobs or os.cpu_count() or 1


def select_subset(src: Path, subsets: Path, train_subset: Path, per_class: int, seed: int,
                  val_subset: Path | None = None) -> Path:
    """The selection subset: ``per_class`` train images of each class that ``train_subset``
    does not hold, checked disjoint from it and from ``val_subset``."""
    from experiments.subsets import RECORD, check_disjoint, make_subset

    name = subset_name(src, "select", per_class, seed, tag=f"not-{Path(train_subset).name}")
    dest = make_subset(src, Path(subsets) / name, {"train": per_class}, seed=seed, exclude=train_subset)
    check_disjoint(train_subset, dest, *([val_subset] if val_subset is not None else []))
    empty = sorted(cls for cls, files in json.loads((dest / RECORD).read_text())["files"]["train"].items()
                   if not files)
    if empty:
        raise UserError(f"{src}/train: no image of {', '.join(empty)} is left outside the train subset for the "
                        "selection split: lower TRAIN_PER_CLASS or give SELECT_PER_CLASS=0")
    return dest


def subset_name(src: Path, split: str, per_class: int, seed: int, tag: str = "") -> str:
    """Folder name of a seeded subset: what it holds is in the name (``imagenette-val100-seed0``)."""
    return f"{Path(src).resolve().name}-{split}{per_class}-seed{seed}{'-' + tag if tag else ''}"


def shard_glob(root: Path, split: str, setting: str) -> str:
    return str(Path(root) / split / setting / "shard-*.tar")


def build_shards(src: Path, split: str, settings: list[str], out: Path, shard_size: int, jobs: int,
                 order: str = "mixed", codec_options: dict | None = None, layout: str = "pair") -> None:
    """All settings of one split of ``src`` in one pass (reused when complete)."""
    from pipeline.build import build

    build(src, split, settings, out, shard_size=shard_size, jobs=jobs, order=order, progress=False,
          codec_options=codec_options, layout=layout)


def check_prebuilt(globs: dict[str, str]) -> None:
    """``--prebuilt``: every setting's shards must already be there (carried from the machine
    that built them); a missing folder is a one-line error naming it."""
    import glob

    for setting, pattern in globs.items():
        if not glob.glob(pattern):
            raise UserError(f"--prebuilt: no shards match {pattern} (build them where the source images are, "
                            "with the same options, and copy the folder)")


def _rows(results: Path) -> list[dict]:
    if not results.exists():
        return []
    try:
        rows = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{results}: not a readable results file ({exc}); fix or remove it") from None
    return rows if isinstance(rows, list) else []


def used_precision(choice: str, device: str) -> str:
    """What ``--precision choice`` resolves to on ``device`` (fp32 or bf16): what rows record."""
    from trainer.distributed import resolve_device
    from trainer.precision import resolve
    return resolve(choice, resolve_device(device)).name


def evaluated(results: Path, checkpoint: str, settings: list[str], groups: list[str] | None = None,
              precision: str | None = None) -> bool:
    """True when ``results`` already holds this checkpoint's rows for every setting (and every
    group; in ``precision`` when given: fp32 | bf16), and is newer than the checkpoint (a
    retrained run is evaluated again)."""
    if not results.exists() or not Path(checkpoint).exists():
        return False
    if os.path.getmtime(results) < os.path.getmtime(checkpoint):
        return False
    want = {(s, g) for s in settings for g in (groups or [None])}
    stored = portable_path(checkpoint, results.parent)     # as trainer.evaluate writes it
    have = {(r.get("setting"), r.get("group")) for r in _rows(results)
            if isinstance(r, dict) and r.get("checkpoint") == stored
            and (precision is None or r.get("precision") == precision)}
    return want <= have


def evaluate_models(results: Path, checkpoints: list[str], val_globs: dict[str, str], device: str,
                    groups: dict[str, list[str]] | None = None, workers: int | None = None,
                    val_limit: int | None = None, precision: str = "auto") -> None:
    """Evaluate each checkpoint on the val settings it has no rows for yet in ``precision``
    (``val_globs``: setting -> glob), with the class groups when given; rows merge into ``results``."""
    from trainer import EvalConfig, evaluate

    used = used_precision(precision, device)
    todo = [c for c in checkpoints if not evaluated(results, c, list(val_globs), list(groups or {}) or None, used)]
    if todo:
        evaluate(EvalConfig(checkpoints=todo, shards=list(val_globs.values()), out=str(results), device=device,
                            precision=precision, limit=val_limit, progress=False, groups=groups or {},
                            **({"workers": workers} if workers is not None else {})))


def evaluate_pretrained(results: Path, arch: str, weights: str, val_globs: dict[str, str], device: str,
                        groups: dict[str, list[str]] | None = None, workers: int | None = None,
                        val_limit: int | None = None, precision: str = "auto") -> None:
    """The pretrained model on every val setting (skipped when its rows in ``precision`` are there)."""
    from trainer import EvalConfig, evaluate

    used = used_precision(precision, device)
    have = {(r.get("setting"), r.get("group")) for r in _rows(results)
            if isinstance(r, dict) and r.get("method") == "pretrained" and r.get("arch") == arch
            and r.get("precision") == used}
    want = {(s, g) for s in val_globs for g in ([None] + list(groups or {}))}
    if not want <= have:
        evaluate(EvalConfig(arch=arch, weights=[weights], shards=list(val_globs.values()), out=str(results),
                            device=device, precision=precision, limit=val_limit, progress=False,
                            groups=groups or {}, **({"workers": workers} if workers is not None else {})))


def batch_stats(train_glob: str, budget: Budget, seed: int, shuffle_buffer: int = 1000) -> dict:
    """What a run's loader feeds it (epoch 0, the run's seed, workers and limit), read without
    decoding an image: mean distinct classes per batch, the classes seen in the epoch, and
    the i.i.d. expectation C(1 - (1 - 1/C)^B) for the classes of the shards."""
    from trainer.data import LoaderSpec, group_shards, make_train_loader

    sets = group_shards(train_glob)
    loader, _ = make_train_loader(sets, LoaderSpec(batch_size=budget.batch, workers=budget.workers or 0,
                                                   shuffle_buffer=shuffle_buffer, seed=seed),
                                  epoch=0, need_comp=False, need_clean=False, limit=budget.train_limit)
    per_batch, seen = [], set()
    for b in loader:
        labels = b["label"].tolist()
        if labels:
            per_batch.append(len(set(labels)))
            seen.update(labels)
    classes = len({v for s in sets for v in (s.manifest.get("class_index") or {}).values()}) or len(seen)
    iid = classes * (1 - (1 - 1 / classes) ** budget.batch) if classes else 0.0
    return {"distinct_per_batch": sum(per_batch) / len(per_batch) if per_batch else 0.0,
            "classes_seen": len(seen), "classes": classes, "iid": iid, "batches": len(per_batch)}


def write_meta(results: Path, info: dict, budget: Budget, runs: list[Path]) -> Path:
    """``results``'s meta file (``experiments/summarize.py`` prints it under the tables): the
    budget and data of the experiment, merged with what an earlier invocation wrote for the
    same file (lists are joined, so several invocations into one results file add up)."""
    from experiments.summarize import meta_path

    path = meta_path(results)
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {}
    steps = set(old.get("steps_per_run") or [])
    for run in runs:
        rows = RunDir(run).metrics()
        if rows:
            steps.add(sum(int(r.get("train_images") or 0) for r in rows) // budget.batch)
    meta = {**old, **info, **{k: v for k, v in asdict(budget).items()}}
    for key in ("settings", "methods", "seeds"):
        meta[key] = list(dict.fromkeys(list(old.get(key) or []) + list(info.get(key) or [])))
    meta["steps_per_run"] = sorted(steps)
    # what auto picked here (an experiment that compares precisions names them in ``info``)
    if info.get("precision"):
        meta["precision"] = info["precision"]
        meta.pop("precision_choice", None)
    else:
        meta["precision"], meta["precision_choice"] = used_precision(budget.precision, budget.device), budget.precision
    meta["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    meta["environment"] = environment(gpu=budget.device != "cpu")     # "auto" may be a GPU
    from pipeline.atomic import atomic_write_json
    atomic_write_json(path, meta)
    return path
