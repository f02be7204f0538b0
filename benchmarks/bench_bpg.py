"""BPG speed: ms per 224x224 image for tools/bpg encode and decode at -m 9 and -m 5
(x265 with one worker thread), next to the genuine bpgenc/bpgdec 0.9.8 figures measured on
this machine class (given, not re-measured here: the genuine tools are not installable).

Images: the 224² sources in ../shared/bpg-vectors when present, otherwise 224² crops of
scikit-image's bundled photos.  Each image is encoded/decoded ``--repeat`` times after a
warm-up; the table reports the median per image, averaged over images.

    python benchmarks/bench_bpg.py [--q 41] [--repeat 3] [--markdown out.md]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tools.bpg as bpg  # noqa: E402

GENUINE_ENC_MS, GENUINE_DEC_MS = 72.5, 5.2  # bpgenc -m 9 -q 41 / bpgdec, 224², this machine class


def load_images() -> tuple[list[np.ndarray], str]:
    from PIL import Image

    shared = ROOT.parent / "shared" / "bpg-vectors"
    paths = sorted(p for p in shared.glob("*.png") if not p.name.endswith(".dec.png")) if shared.exists() else []
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    imgs = [im for im in imgs if im.shape[:2] == (224, 224)]
    if imgs:
        return imgs, f"{len(imgs)} sources of ../shared/bpg-vectors"
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    return [p[:224, :224].copy() for p in photos], "224² crops of 4 scikit-image photos"


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def run(q: int, repeat: int) -> tuple[list[dict], str]:
    images, what = load_images()
    bpg.decode(bpg.encode(images[0], q=q, effort=5))  # warm-up: library loading, first context
    rows = []
    for effort in (9, 5):
        enc, dec, size = [], [], []
        for img in images:
            data = bpg.encode(img, q=q, effort=effort)
            enc.append(median_ms(lambda: bpg.encode(img, q=q, effort=effort), repeat))
            dec.append(median_ms(lambda: bpg.decode(data), repeat))
            size.append(len(data))
        rows.append({"impl": f"tools/bpg (x265 {bpg.versions()['x265']}, PyAV)", "m": effort,
                     "enc": np.mean(enc), "dec": np.mean(dec), "bytes": np.mean(size)})
    rows.append({"impl": "genuine bpgenc/bpgdec 0.9.8 (given)", "m": 9, "enc": GENUINE_ENC_MS,
                 "dec": GENUINE_DEC_MS, "bytes": None})
    return rows, what


def markdown(rows: list[dict], q: int, what: str) -> str:
    lines = [f"BPG speed, ms per 224×224 image, q {q}, one x265 worker thread ({what}):", "",
             "| implementation | -m | encode ms | decode ms | mean bytes |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        b = "–" if r["bytes"] is None else f"{r['bytes']:.0f}"
        lines.append(f"| {r['impl']} | {r['m']} | {r['enc']:.1f} | {r['dec']:.1f} | {b} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--q", type=int, default=41)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    args = ap.parse_args(argv)
    rows, what = run(args.q, args.repeat)
    table = markdown(rows, args.q, what)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
