"""The receiver (server side): classify transmitted bitstreams with a trained model.

    python -m trainer.decisions.predict --model runs/r50-bpg41/best.pth image.bpg more.jpg other.j2k
    python -m trainer.decisions.predict --model mobilenet_v2_imagenet.pth --arch mobilenet_v2 *.jpg
    python -m trainer.decisions.predict --arch resnet50 --weights IMAGENET1K_V1 --json image.jpg
    python -m trainer.decisions.predict --experts runs/ --default pretrained --arch mobilenet_v2 *.jpg

With ``--experts``, each file is answered by the expert of its codec and rate
(:mod:`trainer.decisions.route`; the rule is in docs/receiver.md), and each answer names
the expert and the reason; ``m2m-serve`` is the same receiver as an HTTP service.

Files are recognised by content (JPEG, JPEG 2000 codestream or JP2, BPG, lossy and lossless
WebP, AVIF, JPEG XL codestream or container, PNG), never by extension, and decoded exactly as a receiver would (``pipeline.codecs.decode_any``).

Geometry: a camera following the paper transmits the 224x224 crop itself, which is fed to
the model as is.  Any other size gets the rule that made those crops (and ImageNet
evaluation in general): Resize(256, bicubic, shorter side) + CenterCrop(224), pixel-identical
to torchvision (``pipeline.crops.crop_image``); the output says when it was applied.

Top-5 classes are printed with ImageNet names when the model has 1000 outputs.  A file that
cannot be read or decoded is reported on stderr with the reason; the other files are still
classified, and the exit status is 1 when any file failed.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from trainer.clitools import run_click
from trainer.precision import click_option as precision_option

CROP = 224


@dataclass
class Prediction:
    file: str
    codec: str | None = None
    bytes: int | None = None
    received_size: list[int] | None = None     # [width, height] as decoded
    cropped: bool = False                      # Resize(256)+CenterCrop(224) was applied
    top: list[dict] = field(default_factory=list)   # [{"index", "name", "prob"}], best first
    error: str | None = None
    expert: str | None = None                  # with --experts: the model that answered
    route: str | None = None                   # ... and why


# --------------------------------------------------------------------------- decoding

#: the largest received file read (a camera's 224² bitstream is a few KB; a BPG or JPEG of a
#: whole photo a few MB).  Anything bigger is refused before it is read.
DEFAULT_MAX_BYTES = 64 * 2**20


class InputError(Exception):
    """A file that cannot be classified (unreadable / undecodable / over a limit)."""


class InputTooLargeError(InputError):
    """A picture whose header announces more pixels than the pixel budget."""


def read_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; a FIFO, a device or a folder is
    refused without blocking (O_NONBLOCK, then fstat on what was opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise InputError("a folder; refused") from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, socket or device)"
            raise InputError(f"{kind}; refused")
        if st.st_size > max_bytes:
            raise InputError(f"{st.st_size} bytes is over the input cap of {max_bytes} (--max-bytes)")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputError(f"more than {max_bytes} bytes (--max-bytes)")
    return data


def read_input(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, Prediction]:
    """Bytes -> 224x224x3 uint8 as the model sees it, and the prediction record so far.
    Raises InputError naming the reason; nothing that goes wrong with one file (a decoder
    error, the pixel budget, running out of memory) escapes as anything else."""
    return decode_input(read_bytes(path, max_bytes), str(path))


def probe_input(data: bytes):
    """The bitstream's headers (:func:`pipeline.codecs.probe`: codec, size within the pixel
    budget, quality), nothing decoded; InputError naming the reason."""
    from pipeline.codecs import CodecError, probe
    from pipeline.limits import PixelBudgetError

    try:
        return probe(data)
    except PixelBudgetError as exc:
        raise InputTooLargeError(str(exc)) from None
    except CodecError as exc:
        raise InputError(str(exc)) from None
    except Exception as exc:  # a parser bug on hostile input must not stop the other files
        raise InputError(f"unreadable header ({type(exc).__name__}: {exc})") from None


def decode_input(data: bytes, name: str) -> tuple[np.ndarray, Prediction]:
    """:func:`read_input` of bytes already received (the server's request bodies)."""
    from pipeline.codecs import CodecError, decode_any, detect
    from pipeline.limits import PixelBudgetError, check_pixels

    try:
        codec = detect(data).name
        rgb = decode_any(data)
        check_pixels(int(rgb.shape[1]), int(rgb.shape[0]), "decoded picture")
        pred = Prediction(file=name, codec=codec, bytes=len(data),
                          received_size=[int(rgb.shape[1]), int(rgb.shape[0])])
        rgb, pred.cropped = model_input(rgb)
    except PixelBudgetError as exc:
        raise InputTooLargeError(str(exc)) from None
    except CodecError as exc:
        raise InputError(str(exc)) from None
    except MemoryError:
        raise InputError("out of memory while decoding (lower --max-pixels)") from None
    except Exception as exc:  # a decoder bug on hostile input must not stop the other files
        raise InputError(f"decoder failed ({type(exc).__name__}: {exc})") from None
    return rgb, pred


def model_input(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """The 224² crop passes through untouched; anything else gets Resize(256)+CenterCrop(224)."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.shape[:2] == (CROP, CROP):
        return rgb, False
    from PIL import Image

    from pipeline.crops import crop_image
    return crop_image(Image.fromarray(rgb)), True


# --------------------------------------------------------------------------- the model

def load(model_path: str | None, arch: str | None, weights: str | None, device: str, precision=None):
    """(model in eval mode, meta) from a run checkpoint, a weights file or a weights name, in
    the memory layout of ``precision`` (a resolved ``trainer.precision.Precision``; None: as loaded)."""
    from trainer.models import load_model

    source = model_path if model_path is not None else weights
    model, meta = load_model(source, arch=arch)
    model = model.to(device).eval()
    return (precision.prepare(model) if precision is not None else model), meta


def class_names(meta: dict, n: int) -> list[str]:
    """ImageNet names for 1000 outputs, the run's class names when it recorded them, else indices."""
    if n == 1000:
        from pipeline.classes import imagenet_classes
        return [c.name for c in imagenet_classes()]
    args = meta.get("args") or {}
    names = meta.get("classes") or args.get("classes") or args.get("class_names")
    if isinstance(names, list) and len(names) == n:
        return [str(x) for x in names]
    return [f"class {i}" for i in range(n)]


def classify(model, batch: list[np.ndarray], device: str, k: int,
             precision=None) -> tuple[np.ndarray, np.ndarray, int]:
    """(top-k probabilities, top-k indices, number of classes) of a batch of HxWx3 uint8, the
    forward in ``precision`` (a resolved ``trainer.precision.Precision``; None: float32 as is)."""
    import torch
    from contextlib import nullcontext

    x = torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float().div_(255)
    if precision is not None:
        x = precision.layout(x)
    with torch.inference_mode(), (precision.autocast() if precision is not None else nullcontext()):
        probs = model(x).float().softmax(dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return top.values.cpu().numpy(), top.indices.cpu().numpy(), int(probs.shape[1])


def answer(expert, batch: list[np.ndarray], preds: list[Prediction], device: str, k: int) -> None:
    """Fill ``top`` of each prediction with one forward of ``expert`` over the batch."""
    values, indices, n = classify(expert.model, batch, device, k, expert.precision)
    names = class_names(expert.meta, n)
    for pred, vals, idxs in zip(preds, values, indices):
        pred.top = [{"index": int(i), "name": names[int(i)], "prob": float(v)} for v, i in zip(vals, idxs)]


def route_input(zoo, data: bytes, name: str):
    """(expert, 224² input, prediction so far) of one received bitstream: headers first (the
    route and the pixel budget), then the decode.  InputError naming the reason."""
    from .route import RouteError

    probe = probe_input(data)
    try:
        expert, route = zoo.choose(probe)
    except RouteError as exc:
        raise InputError(str(exc)) from None
    x, pred = decode_input(data, name)
    if route is not None:
        pred.expert, pred.route = expert.name, route.reason
    return expert, x, pred


def predict_files(files: list[Path], model, meta: dict, device: str = "cpu", k: int = 5,
                  batch_size: int = 16, on_error=None, max_bytes: int = DEFAULT_MAX_BYTES,
                  zoo=None, precision=None) -> list[Prediction]:
    """Predictions in input order; failed files carry ``error`` (and go to ``on_error``).
    ``zoo`` (:func:`trainer.decisions.zoo.load_zoo`): each file goes to its expert, and
    ``model``/``meta``/``precision`` are not used (the zoo's models run in its own)."""
    from .zoo import Zoo

    zoo = zoo or Zoo.single(model, meta, "model", precision)
    preds: list[Prediction] = []
    pending: dict[str, tuple[object, list[np.ndarray], list[Prediction]]] = {}

    def flush(name: str) -> None:
        expert, xs, ps = pending.pop(name)
        answer(expert, xs, ps, device, k)

    for path in files:
        try:
            expert, x, pred = route_input(zoo, read_bytes(Path(path), max_bytes), str(path))
        except InputError as exc:
            pred = Prediction(file=str(path), error=str(exc))
            if on_error:
                on_error(pred)
            preds.append(pred)
            continue
        preds.append(pred)
        _, xs, ps = pending.setdefault(expert.name, (expert, [], []))
        xs.append(x)
        ps.append(pred)
        if len(xs) >= batch_size:
            flush(expert.name)
    for name in list(pending):
        flush(name)
    return preds


# --------------------------------------------------------------------------- output

def format_prediction(p: Prediction) -> str:
    w, h = p.received_size
    geometry = f"{w}x{h}" + (" -> Resize(256)+CenterCrop(224)" if p.cropped else "")
    lines = [f"{p.file}: {p.codec}, {p.bytes} bytes, {geometry}"]
    if p.expert is not None:
        lines.append(f"  expert {p.expert}: {p.route}")
    lines += [f"  {rank}. {t['prob'] * 100:6.2f}%  {t['name']} ({t['index']})" for rank, t in enumerate(p.top, 1)]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", default=None,
              help="Run checkpoint (best.pth / last.pth) or a plain weights file (then give --arch).")
@click.option("--experts", default=None,
              help="Route each file to its expert: a folder of run folders, or a YAML list of checkpoints.")
@click.option("--default", "default", default=None,
              help="With --experts: the model when no expert fits: a checkpoint, a weights file (with --arch), "
                   "or 'pretrained' (the torchvision weights of --arch).")
@click.option("--arch", default=None, help="Architecture of plain weights (e.g. resnet50, mnasnet1_0).")
@click.option("--weights", default=None,
              help="Torchvision weights name (e.g. IMAGENET1K_V1) with --arch, instead of --model.")
@click.option("--topk", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@precision_option()
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Largest decoded picture in pixels (default: the pixel budget, 50 M; env M2M_MAX_PIXELS).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_BYTES, show_default=True,
              help="Largest received file read.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (errors included) to stdout.")
def cli(files, model_path, experts, default, arch, weights, k, batch_size, device, precision, max_pixels, max_bytes,
        as_json):
    """Classify received bitstreams (JPEG, JPEG 2000, BPG, WebP, AVIF, JPEG XL, PNG; detected by content)."""
    routed = experts is not None or default is not None
    if routed and (model_path is not None or weights is not None):
        raise click.UsageError("--experts/--default route between models: give them without --model or --weights")
    if not routed and (model_path is None) == (weights is None):
        raise click.UsageError("give --model PATH, or --arch with --weights NAME, or --experts DIR")
    if weights is not None and arch is None:
        raise click.UsageError("--weights needs --arch")
    if max_pixels is not None:
        from pipeline.limits import set_max_pixels
        set_max_pixels(max_pixels)
    from trainer.distributed import resolve_device
    from trainer.precision import resolve
    device = resolve_device(device or "auto")
    prec = resolve(precision, device)        # bf16 where the device has none: one line, exit status 2
    click.echo(prec.describe(), err=True)
    zoo = model = meta = None
    if routed:
        from .zoo import load_zoo
        zoo = load_zoo(experts, default, arch, device, precision=prec)
    else:
        model, meta = load(model_path, arch, weights, device, prec)  # a refused / bad file: one line (UserError)

    def report_error(p: Prediction) -> None:
        click.echo(f"error: {p.file}: {p.error}", err=True)

    preds = predict_files(list(files), model, meta, device, k, batch_size, on_error=report_error,
                          max_bytes=max_bytes, zoo=zoo, precision=prec)
    if as_json:
        click.echo(json.dumps([asdict(p) for p in preds], indent=2))
    else:
        click.echo("\n".join(format_prediction(p) for p in preds if p.error is None))
    failed = sum(p.error is not None for p in preds)
    if failed:
        click.echo(f"{failed} of {len(preds)} files could not be classified", err=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point callable from tests: returns the exit status instead of exiting."""
    return run_click(cli, argv, "python -m trainer.decisions.predict")


if __name__ == "__main__":
    sys.exit(main())
