"""A zoo of experts: the models a receiver holds, loaded once, and the rule that picks one per
received bitstream (:mod:`receiver.route`).

Where experts come from (``--experts``):

- a folder of run folders the trainer wrote (``runs/``; read through :class:`trainer.rundir.RunDir`,
  ``best.pth`` of each, else ``last.pth``), or one run folder;
- a small YAML file, one entry per checkpoint, paths relative to the file::

      - {path: runs/jpeg-10/best.pth}
      - {path: old/model.pth, settings: [j2k-200]}

  ``settings`` names the settings an entry answers for: a subset of its checkpoint's
  ``trained_on``, or, for a checkpoint that has none, the settings it was trained on (their
  rate then unknown: such an expert is matched by quality, or as its codec's only one).

Every checkpoint is read with ``weights_only=True`` (:mod:`trainer.checkpoint`): nothing
executable.  A checkpoint without ``trained_on`` can only be the default.

The default (``--default``): a checkpoint or weights file (plain weights need ``--arch``), or
``pretrained``: the torchvision ImageNet weights of ``--arch`` (by name, which may download
them once into torch's cache).
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.codecs import Probe
from trainer.clitools import UserError
from trainer.rundir import RunDir

from .route import DEFAULT, ExpertCard, Route, RouteError, Router, TrainedSetting, check_unique, trained_settings

#: a list of experts is typed by hand: anything bigger is not one
MAX_YAML_BYTES = 1 << 20
PRETRAINED = "pretrained"


class ZooError(UserError, ValueError):
    """A zoo that cannot be built (one line naming the file or folder and the reason)."""


@dataclass
class Expert:
    card: ExpertCard
    model: Any
    meta: dict
    path: str
    precision: Any = None      # the trainer.precision.Precision its forwards run in (None: float32 as is)

    @property
    def name(self) -> str:
        return self.card.name


@dataclass
class Zoo:
    """Experts by name, the default model (or None), and the router over them.  ``routed``
    False: a single model answers everything (``predict --model``), and answers carry no route."""
    experts: dict[str, Expert]
    default: Expert | None
    routed: bool = True
    router: Router = field(init=False)
    table: str | None = None         # the routing table file routing goes by (None: the fixed rule)

    def __post_init__(self) -> None:
        self.router = Router([e.card for e in self.experts.values()])

    def use_table(self, path: str | os.PathLike) -> None:
        """Route by a calibrated routing table (:mod:`receiver.routing_table`), checked against
        these experts and the default now, so that a bad table is one line at start."""
        from trainer.labelspace import of_model

        from . import routing_table as rt
        table = rt.read(path)
        rt.check_zoo(table, str(path), self.experts, self.default, lambda e: of_model(e.meta))
        self.router = rt.TableRouter(table, Router([e.card for e in self.experts.values()]), str(path))
        self.table = str(path)

    @classmethod
    def single(cls, model, meta: dict, name: str, precision=None) -> "Zoo":
        return cls({}, Expert(ExpertCard(name), model, meta, name, precision), routed=False)

    def choose(self, probe: Probe) -> tuple[Expert, Route | None]:
        """The expert that answers this bitstream, and why; RouteError when none fits and there
        is no default."""
        if not self.routed:
            return self.default, None
        route = self.router.route(probe)
        if route.expert == DEFAULT:
            if self.default is None:
                raise RouteError(f"no expert for {probe.codec} and no default model (--default)")
            return self.default, route
        return self.experts[route.expert], route

    def models(self) -> list[dict]:
        """What ``GET /v1/models`` lists."""
        out = [{"name": e.name, "role": "specialist" if e.card.specialist else "generalist",
                "arch": e.meta.get("arch"), "num_classes": e.meta.get("num_classes"),
                "precision": getattr(e.precision, "name", None),
                "settings": [{"setting": s.setting, "codec": s.codec, "q": s.q, "bpp": s.bpp}
                             for s in e.card.settings]} for e in self.experts.values()]
        if self.default is not None:
            out.append({"name": DEFAULT, "role": "default", "source": self.default.path,
                        "arch": self.default.meta.get("arch"), "num_classes": self.default.meta.get("num_classes"),
                        "precision": getattr(self.default.precision, "name", None), "settings": []})
        return out


# --------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Entry:
    name: str               # how answers name the expert: the folder or path as the user gave it
    checkpoint: Path
    settings: tuple[str, ...] | None = None


def expert_entries(source: str | os.PathLike, select: str | None = None) -> list[Entry]:
    """The checkpoints ``--experts`` names: run folders under a folder, one run folder, or a YAML list;
    ``select``: only the run folders whose name matches this glob."""
    p = Path(source)
    if p.is_dir():
        runs = [RunDir(p)] if RunDir(p).is_run() else RunDir.find(p)
        if select is not None:
            runs = [r for r in runs if fnmatch.fnmatchcase(r.name, select)]
        if not runs:
            raise ZooError(f"{p}: no run folders (folders with args.json) in it"
                           + (f" whose name matches {select!r}" if select is not None else ""))
        out = []
        for run in runs:
            ckpt = run.best if run.best.is_file() else run.last
            if not ckpt.is_file():
                raise ZooError(f"{run.path}: no {run.best.name} nor {run.last.name}: the run has not saved a checkpoint")
            out.append(Entry(_display(p, run.path), ckpt))
        return out
    if p.is_file():
        return _yaml_entries(p)
    raise ZooError(f"{p}: no such folder or file (give a folder of run folders or a YAML list)")


def _display(root: Path, run: Path) -> str:
    """``runs/j2k-200``: the run folder as reached from the folder given."""
    return str(root / run.name) if run != root else str(root)


def _yaml_entries(path: Path) -> list[Entry]:
    from pipeline.bounded import BoundedReadError, read_yaml

    try:   # the project's one bounded reader: size, nesting and aliases checked before anything is built
        data = read_yaml(path, "list of experts", max_bytes=MAX_YAML_BYTES)
    except BoundedReadError as exc:
        raise ZooError(str(exc)) from None
    if not isinstance(data, list) or not data:
        raise ZooError(f"{path}: expected a YAML list of {{path: ..., settings: [...]}} entries")
    out = []
    for i, item in enumerate(data, 1):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or set(item) - {"path", "settings"}:
            raise ZooError(f"{where}: expected {{path: FILE, settings: [NAMES]}} (settings optional)")
        settings = item.get("settings")
        if settings is not None and not (isinstance(settings, list) and settings
                                         and all(isinstance(s, str) for s in settings)):
            raise ZooError(f"{where}: settings must be a non-empty list of setting names")
        ckpt = Path(item["path"])
        out.append(Entry(item["path"], ckpt if ckpt.is_absolute() else path.parent / ckpt,
                         tuple(settings) if settings else None))
    return out


def card_of(entry: Entry, trained_on: list[dict]) -> ExpertCard:
    """The routing card of an expert: its checkpoint's settings, narrowed (or, for a checkpoint
    without them, given) by the entry's ``settings``."""
    where = f"{entry.checkpoint}"
    try:
        settings = list(trained_settings(trained_on, where))
        if entry.settings is not None:
            check_unique(list(entry.settings), f"{where}: settings of the list entry")
            if settings:
                known = {s.setting: s for s in settings}
                missing = [n for n in entry.settings if n not in known]
                if missing:
                    raise ZooError(f"{where}: not trained on {', '.join(missing)} "
                                   f"(trained on {', '.join(known)})")
                settings = [known[n] for n in entry.settings]
            else:
                settings = [TrainedSetting.named(n, where) for n in entry.settings]
    except RouteError as exc:
        raise ZooError(str(exc)) from None
    return ExpertCard(entry.name, tuple(settings))


def load_zoo(experts: str | os.PathLike | None, default: str | None = None, arch: str | None = None,
             device: str = "cpu", select: str | None = None, precision="auto",
             routing: str | os.PathLike | None = None) -> Zoo:
    """Load every expert (``select``: see :func:`expert_entries`) and the default once, in eval
    mode on ``device``, to run in ``precision`` (a choice, auto | fp32 | bf16, or a resolved
    ``trainer.precision.Precision``); ``routing``: a calibrated routing table to route by
    (None: the fixed rule of :mod:`receiver.route`)."""
    from trainer import adapt_bn, checkpoint
    from trainer.models import load_model
    from trainer.precision import resolve

    prec = resolve(precision, device)

    # experts of BN statistics (trainer.adapt_bn) share their base's weights: one copy per base,
    # the default's own when it is their base
    bases: dict = {}
    default_expert = None
    if default is not None:
        if default == PRETRAINED:
            if arch is None:
                raise ZooError("--default pretrained needs --arch (the architecture whose torchvision weights to use)")
            model, meta = load_model("DEFAULT", arch=arch)
        else:
            model, meta = load_model(default, arch=arch)
            if meta.get("method") != adapt_bn.KIND and os.path.isfile(default):
                bases[(os.path.realpath(default), meta["arch"], meta["num_classes"])] = model
        default_expert = Expert(ExpertCard(DEFAULT), prec.prepare(model.to(device).eval()), meta, default, prec)

    loaded: dict[str, Expert] = {}
    files: dict[str, Entry] = {}     # one file under two spellings (sub/a.pth, ./sub/a.pth) is one expert
    for entry in expert_entries(experts, select) if experts is not None else []:
        real = os.path.realpath(entry.checkpoint)
        if real in files:
            if files[real].settings != entry.settings:
                raise ZooError(f"{entry.checkpoint}: listed twice (also as {files[real].name!r}) with other settings")
            continue
        files[real] = entry
        ckpt = checkpoint.load(entry.checkpoint)
        card = card_of(entry, checkpoint.training_settings(ckpt) if isinstance(ckpt, dict) else [])
        if not card.settings:
            raise ZooError(f"{entry.checkpoint}: the checkpoint does not say what it was trained on (no trained_on); "
                           "give it as --default, or name its settings in a YAML list")
        if entry.name in loaded:
            raise ZooError(f"{entry.checkpoint}: expert {entry.name!r} listed twice")
        if adapt_bn.is_stats_checkpoint(ckpt):
            model, meta = adapt_bn.load(entry.checkpoint, ckpt, bases)
        else:
            model, meta = load_model(entry.checkpoint)
        loaded[entry.name] = Expert(card, prec.prepare(model.to(device).eval()), meta, str(entry.checkpoint), prec)
    if not loaded and default_expert is None:
        raise ZooError("no model: give --experts, --default, or both")
    zoo = Zoo(loaded, default_expert)
    if routing is not None:
        try:
            zoo.use_table(routing)
        except RouteError as exc:
            raise ZooError(str(exc)) from None
    return zoo


def load_single(source: str, arch: str | None = None, device: str = "cpu", precision="auto") -> Zoo:
    """A zoo of one model that answers everything (``predict --model`` or ``--weights``): a run
    checkpoint, a weights file (with ``arch``) or a weights name (with ``arch``), to run in
    ``precision`` (a choice or a resolved ``trainer.precision.Precision``)."""
    from trainer.models import load_model
    from trainer.precision import resolve

    prec = resolve(precision, device)
    model, meta = load_model(source, arch=arch)
    return Zoo.single(prec.prepare(model.to(device).eval()), meta, "model", prec)


def click_options(required: bool = False, routing: bool = True):
    """The options that name a zoo (``--experts``, ``--default``, ``--routing``), declared once
    for every command that loads one (predict, serve, calibrate)."""
    import click

    opts = [click.option("--experts", required=required, default=None,
                         help="The experts: a folder of run folders, or a YAML list of checkpoints "
                              "({path: ..., settings: [...]})."),
            click.option("--default", "default", default=None,
                         help="The model when no expert fits: a checkpoint, a weights file (with --arch), "
                              "or 'pretrained' (the torchvision weights of --arch).")]
    if routing:
        opts.append(click.option("--routing", default=None, type=click.Path(dir_okay=False, path_type=Path),
                                 help="Route by this calibrated routing table (receiver.calibrate) instead "
                                      "of the fixed rule."))

    def decorate(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate
