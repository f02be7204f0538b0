"""The embedded default: real photos bundled in scikit-image, cut into many 224²-able views.

These photos carry no ImageNet labels.  The training views stay unlabelled (label -1: the
demo trains with ``--labels teacher``); the validation views are labelled with the
pretrained model's prediction on the *clean* crop, so the demo's "top-1" reads as
"agreement with what the model says on the uncompressed image" — exactly what compression
should not change in the M2M setting.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

# (name, loader): natural photos and a few textured scenes, all bundled with scikit-image
PHOTOS = {
    "astronaut": skimage.data.astronaut,
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "rocket": skimage.data.rocket,
    "camera": skimage.data.camera,
    "motorcycle_left": lambda: skimage.data.stereo_motorcycle()[0],
    "motorcycle_right": lambda: skimage.data.stereo_motorcycle()[1],
    "horse": skimage.data.horse,
    "coins": skimage.data.coins,
    "hubble": skimage.data.hubble_deep_field,
    "retina": skimage.data.retina,
    "ihc": skimage.data.immunohistochemistry,
    "brick": skimage.data.brick,
    "grass": skimage.data.grass,
    "gravel": skimage.data.gravel,
    "moon": skimage.data.moon,
    "page": skimage.data.page,
    "clock": skimage.data.clock,
}


def _as_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return a[..., :3] if a.ndim == 3 else a


def views(photo: np.ndarray, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """n crops of 45–100% of the shorter side at random places, half of them mirrored."""
    img = Image.fromarray(_as_uint8(photo))
    w, h = img.size
    out = []
    for _ in range(n):
        side = int(min(w, h) * rng.uniform(0.45, 1.0))
        side = max(side, min(w, h, 96))
        aspect = rng.uniform(0.8, 1.25)
        cw, ch = min(w, int(side * aspect)), min(h, side)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        v = img.crop((x0, y0, x0 + cw, y0 + ch))
        out.append(v.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else v)
    return out


def make_views(root: Path, per_photo: int = 18, val_fraction: float = 1 / 3, seed: int = 0,
               photos: list[str] | None = None) -> tuple[Path, Path]:
    """Write root/train/<photo>_<i>.png (flat, unlabelled) and root/val_unlabelled/...;
    return both folders.  Deterministic for a seed; reused when already complete."""
    train, val = root / "train", root / "val_unlabelled"
    stamp = root / f".complete-{per_photo}-{seed}-{len(photos or PHOTOS)}"
    if stamp.exists():
        return train, val
    shutil.rmtree(root, ignore_errors=True)
    train.mkdir(parents=True)
    val.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n_val = max(1, round(per_photo * val_fraction))
    for name in photos or PHOTOS:
        for i, v in enumerate(views(PHOTOS[name](), per_photo, rng)):
            v.save((val if i < n_val else train) / f"{name}_{i:03d}.png", compress_level=1)
    stamp.touch()
    return train, val


def label_by_model(unlabelled: Path, out: Path, model, batch: int = 32) -> dict[str, int]:
    """Copy each image into out/<wnid>/ where wnid is the model's top-1 on the clean crop."""
    import torch

    from pipeline.classes import imagenet_classes
    from pipeline.crops import load_crop

    files = sorted(unlabelled.glob("*.png"))
    shutil.rmtree(out, ignore_errors=True)
    counts: dict[str, int] = {}
    model.eval()
    with torch.no_grad():
        for s in range(0, len(files), batch):
            chunk = files[s:s + batch]
            x = torch.from_numpy(np.stack([load_crop(f) for f in chunk])).permute(0, 3, 1, 2)
            for f, idx in zip(chunk, model(x).argmax(1).tolist()):
                wnid = imagenet_classes()[idx].wnid
                (out / wnid).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / wnid / f.name)
                counts[wnid] = counts.get(wnid, 0) + 1
    return counts
