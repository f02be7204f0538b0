"""Mixed traffic: a receiver gets images of every setting, shuffled.  Top-1 of the routed zoo
(each image answered by the expert of its codec and rate, ``receiver.route``), of the
best single specialist, of each generalist and of the pretrained model, on the same stream.

    python experiments/mixed_traffic.py --zoo runs/experiments/deployment/runs --select '*-bn-train-s0' \\
        --val runs/experiments/deployment/shards/imagenette-val30-seed0/val \\
        --pretrained ../shared/weights/mobilenet_v2_imagenet.pth --arch mobilenet_v2 \\
        --json experiments/results/mixed-traffic-cpu.json

The stream: every image of the val setting folders under ``--val`` (the paper's nine settings
and lossless by default; ``--per-setting`` caps each), in one seeded shuffle, each read as the
bitstream a receiver gets (the shard's ``comp.*``, the clean ``webp`` for lossless).  Each
image is decoded once and shown to every model; the zoo's choice comes from the bitstream's
headers only.  Output: one row per model (top-1 on the whole stream and per setting; 1000-way
and among the classes present in the stream) and the
share of images the zoo routed to the expert of their true setting.
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from pipeline.setting import PAPER_SETTINGS  # noqa: E402
from trainer.clitools import UserError, run_click  # noqa: E402
from trainer.precision import click_option as precision_option  # noqa: E402

ZOO, BEST, GENERALIST, PRETRAINED = "routed zoo", "best specialist", "generalist", "pretrained"


@dataclass
class Received:
    setting: str
    data: bytes
    label: int


def read_traffic(val_root: Path, settings: list[str], per_setting: int | None, seed: int) -> list[Received]:
    """The bitstreams and labels of each setting folder, shuffled together with ``seed``."""
    from pipeline.manifest import Manifest
    from trainer.data.tarstream import tar_samples

    out = []
    for name in settings:
        folder = val_root / name
        try:
            m = Manifest.load(folder / "manifest.json")
        except (OSError, ValueError) as exc:
            raise UserError(f"{folder}: no readable manifest ({exc})") from None
        field = m.get("bitstream") or next((f for f in m.get("sample_fields", []) if f.startswith("clean.")), None)
        if not field:
            raise UserError(f"{folder}: the manifest names no bitstream field")
        got = []
        for tar in sorted(folder.glob("shard-*.tar")):
            for s in tar_samples(str(tar), fields={field.split(".")[0], "cls"}):
                if field in s and "cls" in s:
                    got.append(Received(name, s[field], int(s["cls"])))
                if per_setting is not None and len(got) >= per_setting:
                    break
            if per_setting is not None and len(got) >= per_setting:
                break
        if not got:
            raise UserError(f"{folder}: no samples with {field} and cls in its shards")
        out += got
    random.Random(seed).shuffle(out)
    return out


#: the scores of the stream: 1000-way top-1, and top-1 among the classes present in it (a model
#: fine-tuned on Imagenette has learnt that only its 10 classes occur; the pretrained one has not)
METRICS = {"top1": "arg-max over all the model's classes",
           "top1_present": "arg-max over the classes present in the stream only"}


def evaluate(zoo, traffic: list[Received], device: str, batch: int = 64) -> tuple[dict, dict]:
    """({metric: {model name: {setting: [right, total]}}} with the zoo under ``ZOO``, routing
    counts by setting)."""
    import numpy as np

    from receiver.core import InputError, Receiver, classify

    receiver = Receiver(zoo, device)
    models = {e.name: e for e in zoo.experts.values()}
    if zoo.default is not None:
        models[PRETRAINED] = zoo.default
    present = np.array(sorted({r.label for r in traffic}))
    scores = {m: {n: {} for n in [ZOO, *models]} for m in METRICS}
    routed: dict[str, list[int]] = {}

    def add(metric: str, name: str, setting: str, right: bool) -> None:
        cell = scores[metric][name].setdefault(setting, [0, 0])
        cell[0] += int(right)
        cell[1] += 1

    for start in range(0, len(traffic), batch):
        chunk = traffic[start:start + batch]
        xs, chosen, kept = [], [], []
        for r in chunk:
            try:
                expert, x, _ = receiver.receive(r.data, r.setting)
            except InputError as exc:
                raise UserError(f"an image of {r.setting} cannot be read: {exc}") from None
            xs.append(x)
            chosen.append(expert)
            kept.append(r)
            cell = routed.setdefault(r.setting, [0, 0])
            cell[0] += int(r.setting in [s.setting for s in expert.card.settings] and expert.card.specialist)
            cell[1] += 1
        tops: dict[str, dict[str, np.ndarray]] = {m: {} for m in METRICS}
        for name, e in models.items():
            _, ranked, _, _ = classify(e.model, xs, device, 10 ** 6, e.precision)   # every class, best first
            tops["top1"][name] = ranked[:, 0]
            first_present = np.isin(ranked, present).argmax(axis=1)
            tops["top1_present"][name] = ranked[np.arange(len(ranked)), first_present]
        for metric, by_model in tops.items():
            for name, top in by_model.items():
                for r, i in zip(kept, top):
                    add(metric, name, r.setting, int(i) == r.label)
            for k, (r, e) in enumerate(zip(kept, chosen)):
                key = PRETRAINED if e is zoo.default else e.name
                add(metric, ZOO, r.setting, int(by_model[key][k]) == r.label)
    return scores, routed


def top1(cells: dict[str, list[int]]) -> float:
    right, total = map(sum, zip(*cells.values()))
    return right / total


def summarize(zoo, scores: dict, routed: dict, settings: list[str]) -> tuple[dict[str, list[dict]], str]:
    """{metric: rows (zoo, best specialist, generalists, pretrained)} and their Markdown tables."""
    specialists = [e.name for e in zoo.experts.values() if e.card.specialist]
    generalists = [e.name for e in zoo.experts.values() if e.card.generalist]
    routed_right, routed_total = map(sum, zip(*routed.values()))
    text = (f"Mixed traffic: {routed_total} val images, {routed_total // len(settings)} per setting, shuffled; "
            f"top-1 % on the whole stream and per setting.  The zoo sent {100 * routed_right / routed_total:.1f}% "
            f"of the images to the specialist of their own setting.  The best specialist is the one with the "
            f"highest score on this very stream, which can only flatter it.")
    out = {}
    for metric, note in METRICS.items():
        by_model = scores[metric]
        # names without their folders: the results file names no folder of the machine
        rows = [{"model": ZOO, "name": f"{len(zoo.experts)} experts", "scores": by_model[ZOO]}]
        if specialists:
            best = max(specialists, key=lambda n: (top1(by_model[n]), n))
            rows.append({"model": BEST, "name": Path(best).name, "scores": by_model[best]})
        rows += [{"model": GENERALIST, "name": Path(g).name, "scores": by_model[g]} for g in generalists]
        if PRETRAINED in by_model:
            rows.append({"model": PRETRAINED, "name": Path(zoo.default.path).name, "scores": by_model[PRETRAINED]})
        for r in rows:
            r["top1"] = top1(r["scores"])
            r["per_setting"] = {s: r["scores"][s][0] / r["scores"][s][1] for s in settings if s in r["scores"]}
        head = ["model", f"mixed {metric}", *settings]
        body = [[f"{r['model']} ({r['name']})",
                 f"{100 * r['top1']:.1f}", *(f"{100 * r['per_setting'][s]:.1f}" for s in settings)] for r in rows]
        text += f"\n\n{metric} ({note}):\n\n" + table(head, body)
        out[metric] = rows
    return out, text


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--zoo", "zoo_dir", required=True, type=click.Path(path_type=Path),
              help="The experts: a folder of run folders or a YAML list (as m2m-serve --experts).")
@click.option("--select", default=None, help="Only the run folders whose name matches this glob.")
@click.option("--val", "val_root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The val split folder holding one folder per setting.")
@click.option("--settings", default=",".join(PAPER_SETTINGS), show_default=True)
@click.option("--pretrained", default=None, help="The pretrained model (weights file with --arch, or 'pretrained').")
@click.option("--arch", default=None)
@click.option("--per-setting", type=click.IntRange(min=1), default=None, help="At most this many images per setting.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None)
@precision_option()
@click.option("--json", "json_out", default=None, type=click.Path(path_type=Path),
              help="The results file docs/receiver.md's block is rendered from.")
@click.option("--markdown", default=None, type=click.Path(path_type=Path))
def cli(zoo_dir, select, val_root, settings, pretrained, arch, per_setting, seed, device, precision, json_out,
        markdown):
    """Top-1 on shuffled traffic of every setting: routed zoo, best specialist, generalist, pretrained."""
    import torch

    from pipeline.setting import Setting
    from receiver.zoo import load_zoo

    names = [s.name for s in Setting.parse_list(settings)]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from trainer.precision import resolve
    prec = resolve(precision, device)
    zoo = load_zoo(zoo_dir, pretrained, arch, device, select=select, precision=prec)
    traffic = read_traffic(val_root, names, per_setting, seed)
    scores, routed = evaluate(zoo, traffic, device)
    rows, text = summarize(zoo, scores, routed, names)
    if select:   # several zoos may share a folder (e.g. --bn train and frozen): say which one
        text = f"Zoo: the run folders matching `{select}`.  " + text
    click.echo(text)
    if markdown:
        atomic_write(markdown, text + "\n")
    if json_out:
        from docsgen.readme_block import save
        save(json_out, text, "experiments/mixed_traffic.py", _ARGV,
             results={"rows": {m: [{k: v for k, v in r.items() if k != "scores"} for r in rs]
                               for m, rs in rows.items()},
                      "routed_to_own_setting": {s: c[0] / c[1] for s, c in routed.items()},
                      "images": len(traffic), "seed": seed, "precision": prec.name})
    return 0


_ARGV: list[str] = []     # the command line the results file records


def main(argv: list[str] | None = None) -> int:
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    return run_click(cli, _ARGV, "experiments/mixed_traffic.py")


if __name__ == "__main__":
    sys.exit(main())
