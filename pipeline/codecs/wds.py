"""A webdataset decode handler for the shards' bitstreams, for third-party readers:

    import webdataset as wds
    from pipeline.codecs import wds_handler
    ds = wds.WebDataset(urls).decode(wds_handler, "rgb8")    # comp.bpg, comp.jp2, ... -> H×W×3 uint8

webdataset decodes JPEG and JPEG 2000 through Pillow itself but knows nothing of BPG; this
handler decodes every codec bitstream (``comp.bpg``, ``comp.jp2``, ``comp.j2k``,
``comp.jpg``, ``comp.webp``, ``comp.avif``, ``comp.jxl``) with the project's own decoders —
the pixels the manifests' PSNR and SSIM were measured on, under the pixel budget — and
leaves everything else (``clean.webp``, ``cls``, ``json``) to the handlers after it.  ``wds_handler_for("torchrgb")`` gives the
other webdataset image specs.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .base import REGISTRY, decode_any


def _codec_extensions() -> set[str]:
    # the lossless setting stores no comp.* member; its WebP/PNG stay with webdataset
    return {ext for cls in REGISTRY if cls.q_range is not None for ext in cls.file_extensions()}


def _convert(rgb: np.ndarray, imagespec: str) -> Any:
    from PIL import Image
    from webdataset.autodecode import imagespecs

    if imagespec not in imagespecs:
        raise ValueError(f"unknown webdataset image spec {imagespec!r}; one of {', '.join(imagespecs)}")
    atype, etype, mode = imagespecs[imagespec]
    if mode == "l":
        rgb = np.asarray(Image.fromarray(rgb).convert("L"))
    elif mode == "rgba":
        rgb = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if atype == "pil":
        return Image.fromarray(rgb)
    out = rgb.astype(np.float32) / 255.0 if etype == "float" else rgb
    if atype == "torch":
        import torch
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1) if out.ndim == 3 else out))
    return out


def wds_handler_for(imagespec: str = "rgb8", budget=None) -> Callable[[str, bytes], Any]:
    """A handler that returns codec bitstreams decoded in webdataset's ``imagespec`` format,
    within ``budget`` (a :class:`pipeline.limits.DecodeBudget`; None: the default)."""
    extensions = _codec_extensions()

    def handler(key: str, data: bytes):
        # webdataset passes ".comp.webp"; only comp.* is a bitstream (clean.webp is not lossy WebP)
        field, _, ext = key.lstrip(".").lower().rpartition(".")
        if field != "comp" or ext not in extensions:
            return None
        rgb = decode_any(data, budget)            # recognised by content; CodecError if bad
        return rgb if imagespec == "rgb8" else _convert(rgb, imagespec)

    handler.__name__ = f"wds_handler_{imagespec}"
    return handler


#: ``wds.WebDataset(urls).decode(wds_handler, "rgb8")``: codec bitstreams -> H×W×3 uint8
wds_handler = wds_handler_for("rgb8")
