"""The GPU-JPEG hand-off, whole: whether a loader may leave its JPEG bitstreams undecoded
(:func:`use_gpu_jpeg`), the header check a worker makes instead of decoding (:func:`jpeg_size`),
and the decoding on the device (:class:`DeviceJpeg`)."""
from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch

from .skips import SampleError

log = logging.getLogger("trainer.data")


def use_gpu_jpeg(sets, device: torch.device, comp: bool, what: str, quiet: bool = False) -> bool:
    """Whether --gpu-decode can decode this loader's bitstreams on the GPU; says why not."""
    why = None
    if device.type != "cuda":
        why = "no CUDA device: the loader workers decode the JPEG bitstreams on the CPU"
    elif not comp:
        why = "the method does not read the compressed crops"
    elif any(s.codec != "jpeg" for s in sets):
        why = (f"{', '.join(s.name for s in sets if s.codec != 'jpeg')} not JPEG: the loader workers decode "
               f"the {what} bitstreams on the CPU")
    if why is not None and not quiet:
        log.warning("--gpu-decode: %s", why)
    return why is None


def jpeg_size(data: bytes, what: str, budget=None) -> tuple[int, int]:
    """(width, height) of a JPEG from its header, checked against the decode budget (size,
    components, scans: :meth:`pipeline.codecs.Codec.header`), no decoding."""
    from PIL import Image

    from pipeline.codecs import get
    from pipeline.limits import PixelBudgetError
    try:
        get("jpeg").header(data, budget)
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            if img.mode not in ("RGB", "L"):
                raise SampleError(f"{what}: a {img.mode} JPEG (the GPU decoder takes RGB or grey)")
            return img.size
    except (SampleError, PixelBudgetError) as exc:
        raise SampleError(str(exc)) from None
    except Exception as exc:
        raise SampleError(f"{what}: not a readable JPEG ({type(exc).__name__})") from None


class DeviceJpeg:
    """Decodes the JPEG bitstreams a ``gpu_jpeg`` loader left in the batch (``comp_jpeg``) with
    ``torchvision.io.decode_jpeg(..., device=device)`` (nvJPEG on CUDA), into ``comp``.  A batch
    the device decoder refuses is decoded picture by picture on the CPU with the pipeline's
    decoder; pictures that fail there too are dropped from the batch and recorded as skipped.
    One per loop: it says once that the device decoder refused a batch (``refused`` counts)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.refused = 0

    def __call__(self, batch: dict) -> dict:
        if "comp_jpeg" not in batch:
            return batch
        from torchvision.io import ImageReadMode, decode_jpeg

        device = self.device
        data = batch.pop("comp_jpeg")
        lengths = batch.pop("comp_jpeg_lengths").tolist()
        streams = list(torch.split(data, lengths))
        try:
            with warnings.catch_warnings():   # torchvision 0.29 deprecates its decoders for TorchCodec's
                warnings.simplefilter("ignore", DeprecationWarning)
                pictures = decode_jpeg(streams, mode=ImageReadMode.RGB, device=device)
            batch["comp"] = torch.stack(pictures)
            return batch
        except RuntimeError as exc:
            if not self.refused:
                log.warning("decode_jpeg on %s refused a batch (%s): decoding such batches picture by picture on "
                            "the CPU (logged once)", device,
                            str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__)
            self.refused += 1
        from pipeline.codecs import decode_any
        keep, pictures, skips = [], [], list(batch.get("skips") or [])
        for i, (key, stream) in enumerate(zip(batch["key"], streams)):
            try:
                pictures.append(torch.from_numpy(np.array(decode_any(stream.numpy().tobytes()))).permute(2, 0, 1))
                keep.append(i)
            except Exception as exc:  # noqa: BLE001 - one bad picture never stops the run
                skips.append((1, f"{key}: comp.jpg: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
        for k in [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (len(streams),)]:
            batch[k] = batch[k][keep]
        batch["key"] = [batch["key"][i] for i in keep]
        batch["comp"] = (torch.stack(pictures).to(device) if pictures
                         else torch.zeros((0, 3, 1, 1), dtype=torch.uint8))
        batch["skips"] = skips
        return batch
