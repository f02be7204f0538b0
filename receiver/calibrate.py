"""``m2m-calibrate``: score every model of a zoo on a calibration split and write the routing
table that sends each codec and rate bin to the model that did best there
(:mod:`receiver.routing_table` owns the file and the bins).

    python -m receiver.calibrate --experts runs/ --default pretrained --arch mobilenet_v2 \\
        --calibration shards/select --out routing.json
    m2m-serve --experts runs/ --default pretrained --arch mobilenet_v2 --routing routing.json

``--calibration``: either a folder of setting folders of shards (``jpeg-10/``, ``lossless/``,
... each with its manifest, as ``python -m pipeline`` writes them: the experiments'
train-select split), or a folder of class folders of received bitstreams (``CLASS/*.jpg``,
``*.j2k``, ``*.bpg`` ...; labelled like the pipeline labels a source: ImageNet wnids get
their ImageNet index, other names their sorted position).  It must be disjoint from every
image the receiver will be scored on: the table records the identities of its images so that
a results script can check (:func:`receiver.routing_table.check_disjoint`).

The calibration images are read as a receiver gets them: codec and rate from the bitstream's
headers (never from the folder name), decoded once, and shown to every model.  Its label
space must be the models' (a one-line error otherwise).
"""
from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from trainer.clitools import UserError, run_click
from trainer.precision import click_option as precision_option

from .route import DEFAULT
from .zoo import click_options as zoo_options


class CalibrationError(UserError, ValueError):
    """A calibration folder that cannot be used (one line naming it and the reason)."""


@dataclass
class Received:
    """One bitstream of a labelled stream: its group (the setting folder, or codec-quality for
    loose files), bytes, label and identity (sample key; and the clean crop's content identity,
    ``crop_sha256``, where the shards' manifest records it: the selection guard's identity)."""
    setting: str
    data: bytes
    label: int
    key: str
    crop: str | None = None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def read_shard_stream(root: Path, settings: list[str] | None = None, per_setting: int | None = None,
                      seed: int = 0) -> tuple[list[Received], dict]:
    """The bitstreams and labels of the setting folders under ``root`` (``settings``: these only;
    default every folder with a manifest), each capped at ``per_setting``, shuffled together
    with ``seed``; and {"label_space", "num_classes"} of their manifests (one, or an error)."""
    from pipeline.manifest import Manifest
    from trainer.data.tarstream import tar_samples
    from trainer.selection import ids_by_key

    if not root.is_dir():
        raise CalibrationError(f"{root}: no such folder")
    names = settings if settings is not None else sorted(p.name for p in root.iterdir()
                                                         if (p / "manifest.json").is_file())
    if not names:
        raise CalibrationError(f"{root}: no setting folders (folders with manifest.json) in it")
    out, spaces = [], {}
    for name in names:
        folder = root / name
        try:
            m = Manifest.load(folder / "manifest.json")
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{folder}: no readable manifest ({exc})") from None
        spaces.setdefault((m.get("label_space"), m.get("num_classes")), folder)
        field = m.get("bitstream") or next((f for f in m.get("sample_fields", []) if f.startswith("clean.")), None)
        if not field:
            raise CalibrationError(f"{folder}: the manifest names no bitstream field")
        got, crops = [], ids_by_key(folder) or {}
        for tar in sorted(folder.glob("shard-*.tar")):
            for s in tar_samples(str(tar), fields={field.split(".")[0], "cls"}):
                if field in s and "cls" in s:
                    key = str(s["__key__"])
                    got.append(Received(name, s[field], int(s["cls"]), key, crops.get(key)))
                if per_setting is not None and len(got) >= per_setting:
                    break
            if per_setting is not None and len(got) >= per_setting:
                break
        if not got:
            raise CalibrationError(f"{folder}: no samples with {field} and cls in its shards")
        out += got
    if len(spaces) > 1:
        (a, fa), (b, fb) = list(spaces.items())[:2]
        raise CalibrationError(f"{fa} and {fb} have different label spaces ({a[0]} and {b[0]})")
    (space, n), = spaces
    random.Random(seed).shuffle(out)
    return out, {"label_space": space, "num_classes": n}


def read_file_stream(root: Path, max_bytes: int) -> tuple[list[Received], dict]:
    """A folder of class folders of received bitstreams, labelled as the pipeline labels a source."""
    from pipeline.classes import label_space_id
    from pipeline.sources import list_source

    from .core import InputError, read_bytes

    try:
        src = list_source(root)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{root}: {exc}") from None
    if not src.folders:
        raise CalibrationError(f"{root}: no class folders (expected CLASS/<bitstream> or setting folders of shards)")
    out = []
    for it in src.items:
        try:
            out.append(Received("", read_bytes(it.path, max_bytes), it.label, it.key))
        except InputError as exc:
            raise CalibrationError(f"{it.path}: {exc}") from None
    return out, {"label_space": label_space_id(src.class_names), "num_classes": src.num_classes}


def read_calibration(root: Path, settings: list[str] | None, per_setting: int | None, seed: int,
                     max_bytes: int) -> tuple[list[Received], dict]:
    has_shards = root.is_dir() and any((p / "manifest.json").is_file() for p in root.iterdir())
    return read_shard_stream(root, settings, per_setting, seed) if has_shards else read_file_stream(root, max_bytes)


def check_label_space(zoo, info: dict, where: str) -> None:
    """Every model must answer in the calibration's label space."""
    from trainer.labelspace import of_model
    for name, e in models_of(zoo).items():
        mine, n = of_model(e.meta), e.meta.get("num_classes")
        if info.get("label_space") and mine and mine != info["label_space"]:
            raise CalibrationError(f"{where}: label space {info['label_space']}, but model {name!r} was trained on "
                                   f"{mine}: calibrate on images of the models' classes")
        if isinstance(info.get("num_classes"), int) and isinstance(n, int) and n != info["num_classes"]:
            raise CalibrationError(f"{where}: {info['num_classes']} classes, but model {name!r} has {n} outputs")


def models_of(zoo) -> dict:
    """{name: Expert} of every model a zoo may answer with: the experts and the default."""
    out = dict(zoo.experts)
    if zoo.default is not None:
        out[DEFAULT] = zoo.default
    return out


@dataclass
class Scored:
    """The calibration (or scored) stream as a receiver sees it: per image, its group, codec,
    rate, probe (what routing reads) and, per model, whether its top-1 is right."""
    setting: list[str]
    codec: list[str]
    bpp: list[float]
    probe: list
    right: dict[str, list[bool]]
    #: the same over the classes present only (``score(present=...)``; empty otherwise)
    right_present: dict[str, list[bool]] = field(default_factory=dict)

    def plus(self, other: "Scored") -> "Scored":
        """The same stream with the models of ``other`` (scored on it too) added."""
        if other.bpp != self.bpp:
            raise ValueError("not the same stream")
        return Scored(self.setting, self.codec, self.bpp, self.probe, {**self.right, **other.right},
                      {**self.right_present, **other.right_present})

    def metric(self, name: str) -> "Scored":
        """This stream with ``right`` read as ``name`` says: ``top1`` (arg-max over every class of
        the model) or ``top1_present`` (arg-max over the classes present only)."""
        if name == "top1":
            return self
        if name != "top1_present" or not self.right_present:
            raise ValueError(f"no scores for {name}")
        return replace(self, right=self.right_present, right_present={})


def score(zoo, stream: list[Received], device: str, batch: int = 64, budget=None,
          present: frozenset[int] | None = None) -> Scored:
    """Decode each bitstream once (probed like a receiver: codec and rate from its headers) and
    show it to every model of ``zoo`` (its experts and its default, if any); raises
    CalibrationError for an image that cannot be read.  ``present``: also score the arg-max over
    these classes only (``Scored.right_present``: a deployment that knows its label space)."""
    from .core import InputError, classify, decode_input, probe_input

    models = models_of(zoo)
    out = Scored([], [], [], [], {m: [] for m in models})
    for start in range(0, len(stream), batch):
        chunk = stream[start:start + batch]
        xs = []
        for r in chunk:
            try:
                probed = probe_input(r.data, budget)
                x, _ = decode_input(r.data, probed, r.key, budget)
            except (InputError, ValueError) as exc:
                raise CalibrationError(f"{r.setting or 'image'} {r.key}: cannot be read: {exc}") from None
            xs.append(x)
            out.setting.append(r.setting or (probed.codec if probed.quality is None
                                             else f"{probed.codec}-{probed.quality:g}"))
            out.codec.append(probed.codec)
            out.bpp.append(probed.bpp)
            out.probe.append(probed)
        for name, e in models.items():
            # every class in order when the present ones are asked for: the first present one is their arg-max
            _, top, _, finite = classify(e.model, xs, device, 1 if present is None else 1 << 20, e.precision)
            # a model whose logits are not finite for an image answers nothing right there
            out.right[name] += [bool(ok) and int(t[0]) == r.label for t, r, ok in zip(top, chunk, finite)]
            if present is not None:
                out.right_present.setdefault(name, []).extend(
                    bool(ok) and next((int(c) for c in t if int(c) in present), None) == r.label
                    for t, r, ok in zip(top, chunk, finite))
    return out


def own_bytes(zoo) -> dict[str, dict[str, int]]:
    """Per model: ``own`` bytes (tensors no other model of the zoo holds) and ``shared`` bytes
    (tensors it holds in common with another model, e.g. the weights BN-statistics experts share
    with their base), counted once per storage."""
    import torch
    owners: dict[int, set[str]] = {}
    sizes: dict[int, int] = {}
    for name, e in models_of(zoo).items():
        for t in [*e.model.parameters(), *e.model.buffers()]:
            if not isinstance(t, torch.Tensor) or t.numel() == 0:
                continue
            ptr = t.untyped_storage().data_ptr()
            owners.setdefault(ptr, set()).add(name)
            sizes[ptr] = t.untyped_storage().nbytes()
    out = {name: {"own": 0, "shared": 0} for name in models_of(zoo)}
    for ptr, names in owners.items():
        for n in names:
            out[n]["own" if len(names) == 1 else "shared"] += sizes[ptr]
    return out


#: what a cell's model is chosen by: the arg-max over every class of the models (what the receiver
#: answers), or over the classes present in the calibration images only (a deployment that
#: answers over its own label space)
METRICS = {"top1": "1000-way", "top1_present": "over the classes present"}


def calibrate(zoo, stream: list[Received], info: dict, source: str, device: str, batch: int = 64,
              metric: str = "top1") -> dict:
    """The routing table of ``zoo`` from a calibration ``stream`` (:func:`read_calibration`),
    each cell's model chosen by ``metric`` (one of :data:`METRICS`)."""
    present = frozenset(r.label for r in stream) if metric == "top1_present" else None
    scored = score(zoo, stream, device, batch, present=present).metric(metric)
    return table_of(zoo, scored, stream, info, source, metric)


def table_of(zoo, scored: Scored, stream: list[Received], info: dict, source: str, metric: str = "top1") -> dict:
    """The routing table of ``zoo``'s models from their calibration scores (``scored`` may hold
    more models: only the zoo's count)."""
    import statistics

    from . import routing_table as rt

    models = models_of(zoo)
    cost = {n: b["own"] for n, b in own_bytes(zoo).items()}
    trained: dict[str, list[float]] = {}
    trained_names = set()
    for e in zoo.experts.values():
        for s in e.card.settings:
            trained_names.add(s.setting)
            if s.bpp is not None:
                trained.setdefault(s.codec, []).append(s.bpp)
    groups: dict[tuple[str, str], list[float]] = {}
    for g, c, b in zip(scored.setting, scored.codec, scored.bpp):
        groups.setdefault((c, g), []).append(b)
    cells, scores = [], {}
    for codec in sorted({c for c, _ in groups}):
        # the settings no expert was trained on open the cell above every expert (a trained
        # setting's calibration images sit around its training rate, on either side)
        calib_rates = [statistics.fmean(v) for (c, g), v in groups.items() if c == codec and g not in trained_names]
        for lo, hi, kind in rt.bins(codec, trained.get(codec, []), calib_rates):
            inside = [i for i, (c, b) in enumerate(zip(scored.codec, scored.bpp)) if c == codec and lo <= b < hi]
            cell_scores = {m: (sum(scored.right[m][i] for i in inside), len(inside)) for m in models}
            cell = rt.Cell(codec, lo, hi, kind, rt.choose(cell_scores, cost), len(inside))
            cells.append(cell)
            scores[cell.name] = cell_scores
    model_info = {n: {"source": Path(e.path).name if n == DEFAULT else n,
                      "sha256": rt.file_digest(e.path) if Path(e.path).is_file() else None,
                      "own_bytes": cost[n]} for n, e in models.items()}
    calibration = {"source": source, "images": len(stream), **info,
                   "keys": sorted({r.key for r in stream}),
                   **{k: sorted(v) if v is not None else None for k, v in _identities(stream).items()}}
    return rt.build(cells, scores, model_info, calibration, metric)


def _identities(stream: list[Received]) -> dict[str, set[str] | None]:
    crops = {r.crop for r in stream}
    return {"content_sha256": {_digest(r.data) for r in stream},
            "crop_sha256": None if None in crops else crops}


def stream_ids(stream: list[Received]) -> dict[str, set[str] | None]:
    """The identities :func:`receiver.routing_table.check_disjoint` compares."""
    return {"keys": {r.key for r in stream}, **_identities(stream)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@zoo_options(required=True, routing=False)
@click.option("--select", default=None, help="Only the run folders whose name matches this glob.")
@click.option("--arch", default=None, help="Architecture of a plain weights file or of 'pretrained'.")
@click.option("--calibration", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Setting folders of shards, or class folders of received bitstreams; disjoint from any "
                   "image the receiver is scored on.")
@click.option("--settings", default=None, help="With setting folders: only these (comma-separated).")
@click.option("--per-setting", type=click.IntRange(min=1), default=None, help="At most this many images per setting.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The routing table to write (JSON).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-bytes", type=click.IntRange(min=1), default=64 << 20, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@precision_option()
@click.option("--metric", type=click.Choice(list(METRICS)), default="top1", show_default=True,
              help="Choose each cell's model by top-1 over every class (what the receiver answers), or over "
                   "the classes present in the calibration images (a deployment that knows its label space).")
def cli(experts, select, default, arch, calibration, settings, per_setting, seed, out, batch_size, max_bytes,
        device, precision, metric):
    """Score every model of a zoo on a calibration split; write the routing table."""
    from pipeline.setting import Setting
    from trainer.distributed import resolve_device
    from trainer.precision import resolve

    from . import routing_table as rt
    from .zoo import load_zoo

    device = resolve_device(device or "auto")
    prec = resolve(precision, device)
    names = [s.name for s in Setting.parse_list(settings)] if settings else None
    zoo = load_zoo(experts, default, arch, device, select=select, precision=prec)
    stream, info = read_calibration(calibration, names, per_setting, seed, max_bytes)
    check_label_space(zoo, info, str(calibration))
    table = calibrate(zoo, stream, info, calibration.name, device, batch_size, metric)
    rt.write(out, table)
    for c in table["cells"]:
        click.echo(f"{c['cell']}: {c['model'] or 'fixed rule (no calibration image)'} ({c['images']} images)")
    click.echo(f"wrote {out}", err=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_click(cli, argv, "python -m receiver.calibrate")


if __name__ == "__main__":
    sys.exit(main())
