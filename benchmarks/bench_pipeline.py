"""Pipeline benchmark: throughput on 1 and on all cores, and the overhead ratio.

overhead ratio = (whole pipeline time per image, 1 job)
               / (time to load + crop the source, encode and decode it, nothing else)
measured in the same run on the same images.  Goal: <= 1.5 (metrics, lossless storage
of the clean crop and orchestration at most half of the unavoidable work), and >= 1.8x
from 1 to 2 cores.  Also reports the bytes on disk per sample.

Images: ../shared/imagenette/val (real ImageNet photos) when present, otherwise crops of
scikit-image's bundled photos.

    python benchmarks/bench_pipeline.py [--images 160] [--settings jpeg-10,j2k-200,bpg-41] [--markdown out.md]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.build import build_setting  # noqa: E402
from pipeline.codecs import available, create  # noqa: E402
from pipeline.crops import load_crop  # noqa: E402
from pipeline.sources import list_source  # noqa: E402

DEFAULT_SETTINGS = "lossless,jpeg-75,jpeg-10,j2k-75,j2k-200,bpg-41,bpg-51"


def parse_setting(s: str):
    name, _, q = s.partition("-")
    return name, (float(q) if "." in q else int(q)) if q else None


def embedded_source(folder: Path, n: int) -> tuple[Path, str]:
    """n different 300x400 views of scikit-image's photos, as an unlabelled flat folder."""
    import numpy as np
    import skimage.data
    from PIL import Image

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    out = folder / "embedded"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(photos[i % len(photos)])
        w, h = img.size
        s = 0.6 + 0.4 * ((i * 7919) % 97) / 97
        cw, ch = int(w * s), int(h * s)
        x0, y0 = (i * 31) % (w - cw + 1), (i * 17) % (h - ch + 1)
        img.crop((x0, y0, x0 + cw, y0 + ch)).save(out / f"view{i:04d}.jpg", quality=92)
    return folder, "embedded"


def baseline_ms(codec, paths) -> float:
    """Unavoidable work per image: load + crop + encode + decode."""
    t = time.perf_counter()
    for p in paths:
        codec.decode(codec.encode(load_crop(p)))
    return 1e3 * (time.perf_counter() - t) / len(paths)


def pipeline_ms(src, split, name, q, out, n, jobs, shard_size) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    m = build_setting(src, split, name, q, out, shard_size=shard_size, jobs=jobs, limit=n, progress=False)
    return 1e3 * (time.perf_counter() - t) / n, m


def storage_rows(paths) -> list[str]:
    """Why the clean crop is stored as lossless WebP and x̃ as its bitstream: write/read
    cost and size of the candidate formats on the same crops."""
    import io

    import numpy as np
    from PIL import Image

    crops = [load_crop(p) for p in paths]

    def save(fmt, **kw):
        def f(x):
            buf = io.BytesIO()
            Image.fromarray(x).save(buf, fmt, **kw)
            return buf.getvalue()
        return f

    candidates = {"WebP lossless, method 0, quality 0 (chosen)": save("WEBP", lossless=True, method=0, quality=0,
                                                                    exact=True),
                  "WebP lossless, method 0, quality 50": save("WEBP", lossless=True, method=0, quality=50, exact=True),
                  "PNG, zlib level 1": save("PNG", compress_level=1),
                  "PNG, zlib level 6 (Pillow default)": save("PNG", compress_level=6),
                  "raw RGB": lambda x: x.tobytes()}
    rows = []
    for name, enc in candidates.items():
        enc(crops[0])  # warm-up: library initialisation
        t = time.perf_counter()
        blobs = [enc(x) for x in crops]
        t_enc = 1e3 * (time.perf_counter() - t) / len(crops)
        if name == "raw RGB":
            t_dec = 0.0
        else:
            t = time.perf_counter()
            for b in blobs:
                np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
            t_dec = 1e3 * (time.perf_counter() - t) / len(crops)
        rows.append(f"| {name} | {t_enc:.2f} | {t_dec:.2f} | {np.mean([len(b) for b in blobs]) / 1e3:.1f} |")
    return rows


def storage_table(rows: list[str], n: int, label: str) -> str:
    return "\n".join([f"Storing the clean 224² crop ({n} images from {label}, one core; `make bench`):", "",
                      "| format | write ms | read ms | KB |", "|---|---:|---:|---:|", *rows])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--settings", default=DEFAULT_SETTINGS)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--storage-only", action="store_true", help="only the clean-crop storage comparison")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    shared = ROOT.parent / "shared" / "imagenette"
    if shared.is_dir():
        src, split, label = shared, "val", "Imagenette val (real ImageNet JPEGs, 224² sources)"
    else:
        src, split = embedded_source(tmp, args.images)
        label = "views of scikit-image photos"
    items = list_source(src, split).items
    # spread the sample over the classes rather than taking the first folder only
    step = max(1, len(items) // args.images)
    paths = [it.path for it in items[::step][: args.images]]
    n = len(paths)
    subset = tmp / "subset"
    for p in paths:  # a folder with exactly these images, so both measurements see the same input
        d = subset / split / p.parent.name
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(p, d / p.name)

    if args.storage_only:
        table = storage_table(storage_rows(paths), n, label)
        print(table)
        if args.markdown:
            args.markdown.write_text(table + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
        return
    rows = []
    for setting in args.settings.split(","):
        name, q = parse_setting(setting)
        if name not in available():
            print(f"skipping {setting}: codec {name!r} not available", file=sys.stderr)
            continue
        codec = create(name, q)
        baseline_ms(codec, paths[:8])  # warm-up: imports, library initialisation
        base = baseline_ms(codec, paths)
        one, m = pipeline_ms(subset, split, name, q, tmp / "o1", n, 1, max(1, n // 8))
        # start the worker processes (and their imports) before timing: a real run of a
        # million images pays that once, a 96-image benchmark would count it per setting
        pipeline_ms(subset, split, name, q, tmp / "warm", min(n, 2 * args.jobs), args.jobs, 1)
        many, _ = pipeline_ms(subset, split, name, q, tmp / "o2", n, args.jobs, max(1, n // 8))
        folder = tmp / "o1" / split / codec.setting
        disk = sum(p.stat().st_size for p in folder.glob("shard-*.tar")) / m["count"]
        rows.append({"setting": codec.setting, "base": base, "one": one, "many": many,
                     "ratio": one / base, "speedup": one / many, "disk_kb": disk / 1e3,
                     "bytes": m["mean"]["bytes"], "timing": m["timing_ms_mean"]})
        r = rows[-1]
        print(f"{r['setting']:>9}: base {base:6.2f} ms  pipeline {one:6.2f} ms/img (ratio {r['ratio']:.2f})  "
              f"{1e3 / one:6.1f} img/s on 1 core, {1e3 / many:6.1f} img/s on {args.jobs} "
              f"(x{r['speedup']:.2f})  {r['disk_kb']:.1f} KB/sample", flush=True)
    storage = storage_rows(paths)
    shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        f"Pipeline benchmark: {n} images from {label}; {os.cpu_count()} cores; "
        f"`make bench` regenerates this table.",
        "",
        "| setting | load+crop+enc+dec ms/img | pipeline ms/img (1 job) | overhead ratio | img/s 1 core "
        f"| img/s {args.jobs} cores | speed-up | mean bytes | disk KB/sample |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['base']:.2f} | {r['one']:.2f} | {r['ratio']:.2f} | {1e3 / r['one']:.1f} "
                     f"| {1e3 / r['many']:.1f} | {r['speedup']:.2f}x | {r['bytes']:.0f} | {r['disk_kb']:.1f} |")
    lines += ["", "Per-image stage times inside the pipeline (ms, mean): "
              + "; ".join(f"{r['setting']}: " + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in r["timing"].items())
                          for r in rows) + " (other = SSIM + PSNR + lossless WebP of the clean crop).",
              "", storage_table(storage, n, label)]
    table = "\n".join(lines)
    print("\n" + table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
