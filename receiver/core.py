"""The receiver's core: a received bitstream in, the answer of the model that fits it out.

:class:`Receiver` holds the models (a :class:`receiver.zoo.Zoo`: the experts and a default, or
one model for everything) and answers in two steps, so that the HTTP service can batch the
second across requests:

1. :meth:`Receiver.receive`: the bitstream's headers are probed once (its codec by content,
   never by name; its size within the decode budget; the quality it carries), the routing rule
   picks the model (:mod:`receiver.route`), and the probed codec decodes the picture;
2. :meth:`Receiver.answer`: one forward of a model over the pictures routed to it fills
   their top-k.

:meth:`Receiver.predict_files` does both for files, batching per model.

Geometry: a camera following the paper transmits the 224x224 crop itself, which is fed to
the model as is.  Any other size gets the rule that made those crops (and ImageNet
evaluation in general): Resize(256, bicubic, shorter side) + CenterCrop(224), pixel-identical
to torchvision (``pipeline.crops.crop_image``); the answer says when it was applied.

A bitstream that cannot be answered raises :class:`InputError` naming the reason: nothing
that goes wrong with one input (a decoder error, the decode budget, running out of memory)
escapes as anything else.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.codecs import CodecError, Probe, decode_as, get, probe
from pipeline.limits import DecodeBudget, PixelBudgetError, check_pixels

from .route import RouteError

CROP = 224

#: the largest received file read (a camera's 224² bitstream is a few KB; a BPG or JPEG of a
#: whole photo a few MB).  Anything bigger is refused before it is read.
DEFAULT_MAX_BYTES = 64 * 2**20


@dataclass
class Prediction:
    file: str
    codec: str | None = None
    bytes: int | None = None
    received_size: list[int] | None = None     # [width, height] as decoded
    cropped: bool = False                      # Resize(256)+CenterCrop(224) was applied
    top: list[dict] = field(default_factory=list)   # [{"index", "name", "prob"}], best first
    error: str | None = None
    expert: str | None = None                  # a routed receiver: the model that answered
    route: str | None = None                   # ... and why


class InputError(Exception):
    """A bitstream that cannot be classified (unreadable / undecodable / over a limit)."""


class InputTooLargeError(InputError):
    """A picture whose header announces more pixels than the decode budget."""


# --------------------------------------------------------------------------- bitstream -> input

def read_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; a FIFO, a device or a folder is
    refused without blocking (O_NONBLOCK, then fstat on what was opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise InputError("a folder; refused") from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}") from None
    except ValueError:          # a NUL byte in the name: that file's error, the others go on
        raise InputError("a path with a NUL byte; refused") from None
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


def probe_input(data: bytes, budget: DecodeBudget | None = None) -> Probe:
    """The bitstream's headers (:func:`pipeline.codecs.probe`: codec, what decoding will cost
    within the decode ``budget``, quality), nothing decoded; InputError naming the reason."""
    try:
        return probe(data, budget)
    except PixelBudgetError as exc:
        raise InputTooLargeError(str(exc)) from None
    except CodecError as exc:
        raise InputError(str(exc)) from None
    except Exception as exc:  # a parser bug on hostile input must not stop the other files
        raise InputError(f"unreadable header ({type(exc).__name__}: {exc})") from None


def decode_input(data: bytes, probed: Probe, name: str,
                 budget: DecodeBudget | None = None) -> tuple[np.ndarray, Prediction]:
    """The 224x224x3 uint8 picture the model sees, decoded by the codec ``probed`` found within
    ``budget`` (None: the default decode budget), and the prediction record so far; InputError
    naming the reason."""
    try:
        rgb = decode_as(get(probed.codec), data, budget)
        check_pixels(int(rgb.shape[1]), int(rgb.shape[0]), "decoded picture", budget)
        pred = Prediction(file=name, codec=probed.codec, bytes=len(data),
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


def read_input(path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
               budget: DecodeBudget | None = None) -> tuple[np.ndarray, Prediction]:
    """A file -> the picture the model sees and the prediction record so far (no model chosen)."""
    data = read_bytes(path, max_bytes)
    return decode_input(data, probe_input(data, budget), str(path), budget)


def model_input(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """The 224² crop passes through untouched; anything else gets Resize(256)+CenterCrop(224)."""
    from pipeline.pixels import to_rgb_array
    rgb = to_rgb_array(rgb)      # the pipeline's one conversion (grey, alpha, 16-bit)
    if rgb.shape[:2] == (CROP, CROP):
        return rgb, False
    from PIL import Image

    from pipeline.crops import crop_image
    return crop_image(Image.fromarray(rgb)), True


# --------------------------------------------------------------------------- input -> answer

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
             precision=None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """(top-k probabilities, top-k indices, number of classes, which rows had finite logits)
    of a batch of HxWx3 uint8, the forward in ``precision`` (a resolved
    ``trainer.precision.Precision``; None: float32 as is)."""
    from contextlib import nullcontext

    import torch

    x = torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float().div_(255)
    if precision is not None:
        x = precision.layout(x)
    with torch.inference_mode(), (precision.autocast() if precision is not None else nullcontext()):
        logits = model(x).float()
        finite = torch.isfinite(logits).all(dim=1)
        probs = logits.softmax(dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return top.values.cpu().numpy(), top.indices.cpu().numpy(), int(probs.shape[1]), finite.cpu().numpy()


#: the answer of a picture whose logits are not all finite (a broken model or a picture that
#: overflows it): no class is named, since NaN has no order and JSON no NaN
NOT_FINITE = "the model's output for this picture is not finite (NaN or infinite logits); no answer"


# --------------------------------------------------------------------------- the receiver

class Receiver:
    """The models of a zoo on ``device``, answering with their top ``k`` classes; every
    bitstream is probed and decoded within ``budget`` (None: the default decode budget)."""

    def __init__(self, zoo, device: str = "cpu", k: int = 5, budget: DecodeBudget | None = None):
        self.zoo, self.device, self.k, self.budget = zoo, device, k, budget

    def receive(self, data: bytes, name: str):
        """(model, 224² input, prediction so far) of one received bitstream: headers first (the
        route and the decode budget), then the decode.  InputError naming the reason."""
        probed, expert, route = self.choose(data)
        x, pred = decode_input(data, probed, name, self.budget)
        return expert, x, self.routed(pred, expert, route)

    def choose(self, data: bytes):
        """The first step alone, from the headers (nothing decoded): (probe, model, route)."""
        probed = probe_input(data, self.budget)
        try:
            expert, route = self.zoo.choose(probed)
        except RouteError as exc:
            raise InputError(str(exc)) from None
        return probed, expert, route

    @staticmethod
    def routed(pred: Prediction, expert, route) -> Prediction:
        if route is not None:
            pred.expert, pred.route = expert.name, route.reason
        return pred

    def answer(self, expert, batch: list[np.ndarray], preds: list[Prediction]) -> None:
        """Fill ``top`` of each prediction with one forward of ``expert`` over the batch; a
        picture whose logits are not finite gets ``error`` instead (the others are answered)."""
        values, indices, n, finite = classify(expert.model, batch, self.device, self.k, expert.precision)
        names = class_names(expert.meta, n)
        for pred, vals, idxs, ok in zip(preds, values, indices, finite):
            if not ok:
                pred.error, pred.top = NOT_FINITE, []
                continue
            pred.top = [{"index": int(i), "name": names[int(i)], "prob": float(v)} for v, i in zip(vals, idxs)]

    def predict_files(self, files: list[Path], batch_size: int = 16, on_error=None,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> list[Prediction]:
        """Predictions in input order; failed files carry ``error`` (and go to ``on_error``)."""
        preds: list[Prediction] = []
        pending: dict[str, tuple[object, list[np.ndarray], list[Prediction]]] = {}

        def flush(name: str) -> None:
            expert, xs, ps = pending.pop(name)
            self.answer(expert, xs, ps)
            for p in ps:
                if p.error is not None and on_error:
                    on_error(p)

        for path in files:
            try:
                expert, x, pred = self.receive(read_bytes(Path(path), max_bytes), str(path))
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
