"""BPG speed, side by side in one run: ms per 224×224 image for

- the pipeline's encode path (``pipeline.codecs`` BPG codec: the x265 encoder re-used),
- tools/bpg with a fresh x265 encoder per image (what every picture cost before re-use),
- the genuine bpgenc/bpgdec 0.9.8 (``../shared/bpg-genuine``, one process per image, PNG
  read and file written: how the reference tools are used), when present,

and our decoder against bpgdec.  The implementations alternate image by image, in an order
that rotates each round, after one untimed warm-up pass (library loading, the first x265
set-up, the binaries in the page cache); per image the median over rounds is taken, and the
table reports the mean of those medians over the images.  Our x265 runs one worker thread
(as in the pipeline: one process per core); the genuine bpgenc starts x265's own thread
pool, so its CPU time (user + system, from the child's rusage) is reported beside its
wall time, and the ratios are given for both.

Images: the 224² sources in ../shared/bpg-vectors (real crops) when present, otherwise
224² crops of scikit-image's bundled photos.

    python benchmarks/bench_bpg.py [--q 41] [--rounds 5] [--markdown out.md] [--json benchmarks/results/bpg.json]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tools.bpg as bpg  # noqa: E402
from pipeline.codecs import create  # noqa: E402
from pipeline.markdown import cell, table  # noqa: E402

GENUINE = ROOT.parent / "shared" / "bpg-genuine"
GOAL = 0.85   # the pipeline's encode path at <= 0.85 x the genuine bpgenc time


def load_images(folder: Path) -> tuple[list[np.ndarray], list[Path], str]:
    """224² RGB images and PNG files holding exactly them (the genuine tool reads files)."""
    from PIL import Image

    shared = ROOT.parent / "shared" / "bpg-vectors"
    paths = sorted(p for p in shared.glob("*.png") if not p.name.endswith(".dec.png")) if shared.exists() else []
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    pairs = [(im, p) for im, p in zip(imgs, paths) if im.shape[:2] == (224, 224)]
    what = f"{len(pairs)} real 224² crops of ../shared/bpg-vectors"
    if not pairs:
        import skimage.data

        photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
        pairs = []
        for i, p in enumerate(photos):
            im = np.ascontiguousarray(p[:224, :224, :3])
            path = folder / f"src{i}.png"
            Image.fromarray(im).save(path)
            pairs.append((im, path))
        what = "224² crops of 4 scikit-image photos"
    return [im for im, _ in pairs], [p for _, p in pairs], what


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(fn) -> tuple[float, float, object]:
    """(wall ms, CPU ms of this process and of children it waited for, result)."""
    c0, k0, t0 = time.process_time(), _children_cpu(), time.perf_counter()
    out = fn()
    t1, c1, k1 = time.perf_counter(), time.process_time(), _children_cpu()
    return 1e3 * (t1 - t0), 1e3 * ((c1 - c0) + (k1 - k0)), out


def genuine_encoder(path: Path, q: int, effort: int, out: Path):
    cmd = [str(GENUINE / "bpgenc"), "-q", str(q), "-m", str(effort), "-f", "420", "-o", str(out), str(path)]
    return lambda: (subprocess.run(cmd, check=True, capture_output=True), out.read_bytes())[1]


def genuine_decoder(src: Path, out: Path):
    cmd = [str(GENUINE / "bpgdec"), "-o", str(out), str(src)]
    return lambda: subprocess.run(cmd, check=True, capture_output=True)


def run(q: int, rounds: int, efforts=(9, 5)) -> tuple[list[dict], dict, str]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-bpg-"))
    try:
        images, paths, what = load_images(tmp)
        have_genuine = (GENUINE / "bpgenc").exists() and (GENUINE / "bpgdec").exists()
        rows, ratios = [], {}
        for effort in efforts:
            codec = create("bpg", q, effort=effort)          # the pipeline's object and path
            impls = {
                "reused": lambda i: codec.encode(images[i]),
                "fresh": lambda i: bpg.encode(images[i], q=q, effort=effort, reuse=False),
            }
            if have_genuine and effort == 9:
                impls["genuine"] = lambda i: genuine_encoder(paths[i], q, effort, tmp / "g.bpg")()
            names = list(impls)
            for i in range(len(images)):                     # warm-up pass, untimed
                for name in names:
                    impls[name](i)
            wall = {n: [[] for _ in images] for n in names}
            cpu = {n: [[] for _ in images] for n in names}
            sizes = {n: [0] * len(images) for n in names}
            for r in range(rounds):
                for i in range(len(images)):
                    k = (r + i) % len(names)
                    for name in names[k:] + names[:k]:       # the order rotates
                        w, c, data = timed(lambda: impls[name](i))
                        wall[name][i].append(w)
                        cpu[name][i].append(c)
                        sizes[name][i] = len(data)
            # decode: ours on our bytes, bpgdec on the genuine bytes (one process per image)
            ours_bits = [codec.encode(im) for im in images]
            dec = {"reused": [], "genuine": []}
            if "genuine" in names:
                gfiles = []
                for i in range(len(images)):
                    gfiles.append(tmp / f"g{i}.bpg")
                    gfiles[-1].write_bytes(impls["genuine"](i))
            for r in range(rounds):
                for i in range(len(images)):
                    dec["reused"].append(timed(lambda: bpg.decode(ours_bits[i]))[0])
                    if "genuine" in names:
                        dec["genuine"].append(timed(genuine_decoder(gfiles[i], tmp / "d.png"))[0])
            med = {n: (float(np.mean([np.median(x) for x in wall[n]])), float(np.mean([np.median(x) for x in cpu[n]])))
                   for n in names}
            labels = {"reused": "tools/bpg, x265 encoder re-used (the pipeline's encode path)",
                      "fresh": "tools/bpg, fresh x265 encoder per image",
                      "genuine": "genuine bpgenc/bpgdec 0.9.8, one process per image"}
            for n in names:
                d = dec["genuine" if n == "genuine" else "reused"]
                rows.append({"impl": labels[n], "m": effort, "wall": med[n][0], "cpu": med[n][1],
                             "dec": float(np.median(d)) if d and n != "fresh" else None,
                             "bytes": float(np.mean(sizes[n]))})
            if "genuine" in names:
                for n in ("reused", "fresh"):
                    ratios[n] = (med[n][0] / med["genuine"][0], med[n][1] / med["genuine"][1])
        x265 = bpg.versions()["x265"]
        what += f"; x265 {x265} via PyAV, {rounds} rounds"
        if not have_genuine:
            what += "; genuine tools absent (../shared/bpg-genuine), so no ratio"
        return rows, ratios, what
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(rows: list[dict], ratios: dict, q: int, what: str) -> str:
    body = [[r["impl"], r["m"], r["wall"], r["cpu"], r["dec"], r["bytes"]] for r in rows]
    body = [[cell(v, 0 if k == 5 else 1) for k, v in enumerate(row)] for row in body]
    out = [f"BPG speed, ms per 224×224 image, q {q}, side by side in one run ({what}):", "",
           table(["implementation", "-m", "encode ms (wall)", "encode ms (CPU)", "decode ms (wall)", "mean bytes"],
                 body, align="lrrrrr")]
    if ratios:
        rw, rc = ratios["reused"]
        fw, fc = ratios["fresh"]
        verdict = "meets" if rw <= GOAL else "misses"
        out += ["", f"Encode time / genuine bpgenc at -m 9: re-used encoder {rw:.2f} (wall), {rc:.2f} (CPU); "
                    f"fresh encoder {fw:.2f} (wall), {fc:.2f} (CPU). The pipeline's encode path {verdict} "
                    f"the ≤ {GOAL} goal in wall time."]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--q", type=int, default=41)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    ap.add_argument("--json", type=Path, help="the results file the docs block is rendered from (docsgen/readme_block.py)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows, ratios, what = run(args.q, args.rounds)
    text = markdown(rows, ratios, args.q, what)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json:
        from docsgen.readme_block import save
        save(args.json, text, "benchmarks/bench_bpg.py", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
