"""``m2m-predict``: the receiver on files, each classified by the model that fits it.

    python -m receiver.predict --model runs/r50-bpg41/best.pth image.bpg more.jpg other.j2k
    python -m receiver.predict --model mobilenet_v2_imagenet.pth --arch mobilenet_v2 *.jpg
    python -m receiver.predict --arch resnet50 --weights IMAGENET1K_V1 --json image.jpg
    python -m receiver.predict --experts runs/ --default pretrained --arch mobilenet_v2 *.jpg

With ``--experts``, each file is answered by the expert of its codec and rate
(:mod:`receiver.route`; the rule is in docs/receiver.md), and each answer names the expert
and the reason; ``m2m-serve`` is the same receiver as an HTTP service.  Files are recognised
by content, never by extension, and decoded exactly as a receiver would
(:class:`receiver.core.Receiver`, which also says how a picture of another size than 224²
is cropped).

Top-5 classes are printed with ImageNet names when the model has 1000 outputs.  A file that
cannot be read or decoded is reported on stderr with the reason; the other files are still
classified, and the exit status is 1 when any file failed.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from pipeline.codecs import in_order
from pipeline.limits import max_pixels_option
from trainer.clitools import run_click
from trainer.precision import click_option as precision_option

from .core import DEFAULT_MAX_BYTES, Prediction, Receiver
from .zoo import click_options as zoo_options
from .zoo import load_single, load_zoo


def format_prediction(p: Prediction) -> str:
    w, h = p.received_size
    geometry = f"{w}x{h}" + (" -> Resize(256)+CenterCrop(224)" if p.cropped else "")
    lines = [f"{p.file}: {p.codec}, {p.bytes} bytes, {geometry}"]
    if p.expert is not None:
        lines.append(f"  expert {p.expert}: {p.route}")
    lines += [f"  {rank}. {t['prob'] * 100:6.2f}%  {t['name']} ({t['index']})" for rank, t in enumerate(p.top, 1)]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=f"Classify received bitstreams ({', '.join(c.title for c in in_order())}; detected by content).")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", default=None,
              help="Run checkpoint (best.pth / last.pth) or a plain weights file (then give --arch).")
@zoo_options()
@click.option("--arch", default=None, help="Architecture of plain weights (e.g. resnet50, mnasnet1_0).")
@click.option("--weights", default=None,
              help="Torchvision weights name (e.g. IMAGENET1K_V1) with --arch, instead of --model.")
@click.option("--topk", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@precision_option()
@max_pixels_option
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_BYTES, show_default=True,
              help="Largest received file read.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (errors included) to stdout.")
def cli(files, model_path, experts, default, routing, arch, weights, k, batch_size, device, precision, budget, max_bytes,
        as_json):
    routed = experts is not None or default is not None
    if routed and (model_path is not None or weights is not None):
        raise click.UsageError("--experts/--default route between models: give them without --model or --weights")
    if not routed and (model_path is None) == (weights is None):
        raise click.UsageError("give --model PATH, or --arch with --weights NAME, or --experts DIR")
    if routing is not None and not routed:
        raise click.UsageError("--routing routes between the models of --experts/--default")
    if weights is not None and arch is None:
        raise click.UsageError("--weights needs --arch")
    from trainer.distributed import resolve_device
    from trainer.precision import resolve
    device = resolve_device(device or "auto")
    prec = resolve(precision, device)        # bf16 where the device has none: one line, exit status 2
    click.echo(prec.describe(), err=True)
    zoo = (load_zoo(experts, default, arch, device, precision=prec, routing=routing) if routed   # a bad file: one line (UserError)
           else load_single(model_path if model_path is not None else weights, arch, device, prec))

    def report_error(p: Prediction) -> None:
        click.echo(f"error: {p.file}: {p.error}", err=True)

    preds = Receiver(zoo, device, k, budget).predict_files(list(files), batch_size, on_error=report_error,
                                                          max_bytes=max_bytes)
    if as_json:
        click.echo(json.dumps([asdict(p) for p in preds], indent=2, allow_nan=False))   # a NaN is an error, never a token
    else:
        click.echo("\n".join(format_prediction(p) for p in preds if p.error is None))
    failed = sum(p.error is not None for p in preds)
    if failed:
        click.echo(f"{failed} of {len(preds)} files could not be classified", err=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point callable from tests: returns the exit status instead of exiting."""
    return run_click(cli, argv, "python -m receiver.predict")


if __name__ == "__main__":
    sys.exit(main())
