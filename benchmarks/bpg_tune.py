"""Search x265 parameters that bring tools/bpg's files closer to the genuine bpgenc 0.9.8's.

bpgenc 0.9.8 bundles x265 1.8; PyAV bundles x265 4.2.  At the same -q our files are larger
and a little better.  This script makes genuine reference encodes (``../shared/bpg-genuine``,
into a temporary folder outside the tree), splits the images in two halves — even positions
tune, odd positions are held out — and runs a greedy coordinate search on the tuning half:
a candidate parameter joins the set only if it brings BOTH the mean bytes and the mean PSNR
closer to the genuine encoder's.  The set found is then judged on the held-out half, against
x265's defaults; it is adopted (``tools/bpg/hevc.py: TUNING``) only if both get closer there
too.  The table also gives the Y, Cb and Cr PSNR differences, so a change that only trades
one plane against another shows.

Images: the sources of ../shared/bpg-vectors at each vector's settings, and ``--crops`` real
224² crops of Imagenette val (``pipeline.crops.load_crop``) at -m 9 -f 420, q 41/46/51.

    python benchmarks/bpg_tune.py [--crops 40] [--markdown out.md] [--json out.json]
    python benchmarks/bpg_tune.py --evaluate-only      # today's hevc.TUNING vs x265's defaults (make bench)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tools.bpg as bpg  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from tools.bpg import hevc  # noqa: E402

SHARED = ROOT.parent / "shared"
BPGENC = SHARED / "bpg-genuine" / "bpgenc"

#: candidate changes: x265 options whose defaults or behaviour changed between 1.8 and 4.2
#: (x265's param.cpp and release notes), plus the RD knobs that move along the rate curve.
#: Options that would change the SPS fields a BPG header stores (sao, strong-intra-smoothing,
#: amp, ctu, tu depths) are left out: our headers must stay equal to the genuine ones.
CANDIDATES: dict[str, list] = {
    "rdoq-level": [0, 1],
    "psy-rdoq": [0.5, 1.0],
    "tskip": [0],
    "tskip-fast": [1],
    "limit-tu": [1, 2, 3, 4],
    "rskip": [1, 2],
    "rd": [4, 5],
    "rd-refine": [1],
    "ssim-rd": [1],
    "splitrd-skip": [1],
    "limit-sao": [1],
    "selective-sao": [2, 4],
    "sao-non-deblock": [1],
    "deblock": ["-1,-1", "1,1", "2,2"],
    "cbqpoffs": [1, 2],
    "crqpoffs": [1, 2],
    "rdpenalty": [1, 2],
    "signhide": [0],
    "fast-intra": [1],
    "lowpass-dct": [1],
    "nr-intra": [100, 300],
    "max-merge": [2],
    "early-skip": [1],
}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse)) if mse else float("inf")


def load_jobs(n_crops: int) -> list[dict]:
    """Every (image, settings) pair with its tune/held-out half."""
    from PIL import Image

    from pipeline.crops import load_crop

    jobs = []
    root = SHARED / "bpg-vectors"
    records = json.loads((root / "manifest.json").read_text())["records"]
    sources = sorted({r["source"] for r in records})
    for r in records:
        img = np.asarray(Image.open(root / r["source"]).convert("RGB"))
        jobs.append({"name": r["bpg"], "img": img, "q": r["q"], "m": r["m"], "f": str(r["f"]),
                     "half": "tune" if sources.index(r["source"]) % 2 == 0 else "held-out"})
    files = sorted((SHARED / "imagenette" / "val").glob("*/*.JPEG"))
    picks = np.random.default_rng(2024).choice(len(files), n_crops, replace=False)
    for k, i in enumerate(sorted(picks)):
        img = load_crop(files[i])
        for q in (41, 46, 51):
            jobs.append({"name": f"{files[i].stem}_q{q}", "img": img, "q": q, "m": 9, "f": "420",
                         "half": "tune" if k % 2 == 0 else "held-out"})
    return jobs


def genuine(jobs: list[dict], cache: Path) -> None:
    """Genuine bpgenc bytes and PSNR for each job (cached by image hash and settings)."""
    from PIL import Image

    cache.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        key = hashlib.sha256(job["img"].tobytes()).hexdigest()[:16]
        out = cache / f"{key}_q{job['q']}_{job['f']}_m{job['m']}.bpg"
        if not out.exists():
            src = cache / f"{key}.png"
            if not src.exists():
                Image.fromarray(job["img"]).save(src)
            subprocess.run([str(BPGENC), "-q", str(job["q"]), "-m", str(job["m"]), "-f", job["f"],
                            "-o", str(out), str(src)], check=True, capture_output=True)
        data = out.read_bytes()
        dec = bpg.decode(data)                                 # our decoder is bit-exact with bpgdec
        job["g_bytes"] = len(data)
        job["g_psnr"] = _psnr(job["img"], dec)
        job["g_planes"] = _plane_psnr(job["img"], dec)


def _plane_psnr(src: np.ndarray, dec: np.ndarray) -> list[float]:
    """PSNR of Y, Cb and Cr (BT.601 full range, as bpgenc converts) between two RGB images."""
    from tools.bpg import color
    return [_psnr(a, b) for a, b in zip(color.rgb_to_ycbcr(src), color.rgb_to_ycbcr(dec))]


def evaluate(jobs: list[dict], tuning: dict, half: str | None, planes: bool = False) -> dict:
    """Mean bytes and PSNR of ours and of the genuine encoder over one half (or all);
    ``planes`` adds the mean Y / Cb / Cr PSNR differences (ours - genuine)."""
    hevc.TUNING.clear()
    hevc.TUNING.update(tuning)
    ours_b, ours_p, gen_b, gen_p, dplanes = [], [], [], [], []
    for job in jobs:
        if half and job["half"] != half:
            continue
        data = bpg.encode(job["img"], q=job["q"], effort=job["m"], chroma=job["f"])
        dec = bpg.decode(data)
        ours_b.append(len(data))
        ours_p.append(_psnr(job["img"], dec))
        gen_b.append(job["g_bytes"])
        gen_p.append(job["g_psnr"])
        if planes:
            ours, gen = _plane_psnr(job["img"], dec), job["g_planes"]
            if all(np.isfinite(ours + gen)):
                dplanes.append(np.subtract(ours, gen))
    hevc.TUNING.clear()
    hevc.clear_encoders()
    r = {"n": len(ours_b), "ours_bytes": float(np.mean(ours_b)), "gen_bytes": float(np.mean(gen_b)),
         "ours_psnr": float(np.mean(ours_p)), "gen_psnr": float(np.mean(gen_p))}
    r["bytes_pct"] = 100 * (r["ours_bytes"] / r["gen_bytes"] - 1)
    r["psnr_db"] = r["ours_psnr"] - r["gen_psnr"]
    if planes:
        r["d_y"], r["d_cb"], r["d_cr"] = (float(v) for v in np.mean(dplanes, axis=0))
    return r


def closer(a: dict, b: dict) -> bool:
    """True when ``a`` is closer to the genuine encoder than ``b`` in bytes AND in PSNR."""
    return abs(a["bytes_pct"]) < abs(b["bytes_pct"]) and abs(a["psnr_db"]) < abs(b["psnr_db"])


def score(r: dict, base: dict) -> float:
    """How much of today's gap is left (1 = none closed), bytes and PSNR weighted alike."""
    return abs(r["bytes_pct"]) / max(abs(base["bytes_pct"]), 1e-9) + abs(r["psnr_db"]) / max(abs(base["psnr_db"]), 1e-9)


def valid(option: str, value) -> bool:
    """Does x265 4.2 (through FFmpeg) accept this option?"""
    hevc.TUNING.clear()
    hevc.TUNING[option] = value
    try:
        bpg.encode(np.zeros((64, 64, 3), np.uint8), q=30, effort=1, reuse=False)
        return True
    except Exception:  # noqa: BLE001 - an unknown option fails at encoder open
        return False
    finally:
        hevc.TUNING.clear()


def search(jobs: list[dict], passes: int, log) -> tuple[dict, list[dict]]:
    chosen: dict = {}
    current = evaluate(jobs, chosen, "tune")
    base = current
    trail = [{"step": "x265 defaults", "tuning": {}, **current}]
    log(f"tune half, x265 defaults: bytes {current['bytes_pct']:+.2f}%, PSNR {current['psnr_db']:+.3f} dB")
    for p in range(passes):
        best = None
        for option, values in CANDIDATES.items():
            for value in values:
                if chosen.get(option) == value:
                    continue
                trial = {**chosen, option: value}
                r = evaluate(jobs, trial, "tune")
                ok = closer(r, current)
                log(f"  pass {p + 1} {option}={value}: bytes {r['bytes_pct']:+.2f}%, PSNR {r['psnr_db']:+.3f} dB"
                    f"{'  (closer in both)' if ok else ''}")
                if ok and (best is None or score(r, base) < score(best[1], base)):
                    best = (trial, r)
        if best is None:
            break
        chosen, current = best
        trail.append({"step": f"pass {p + 1}", "tuning": dict(chosen), **current})
        log(f"pass {p + 1}: {chosen}")
    return chosen, trail


def markdown(before: dict, after: dict, tuning: dict, verdict: str, what: str) -> str:
    rows = []
    for half in ("tune", "held-out"):
        for label, r in (("x265 4.2 defaults", before[half]),
                         (":".join(f"{k}={v}" for k, v in tuning.items()) or "(none found)", after[half])):
            rows.append([half, label, r["n"], f"{r['ours_bytes']:.1f}", f"{r['gen_bytes']:.1f}",
                         f"{r['bytes_pct']:+.2f}%", f"{r['ours_psnr']:.2f}", f"{r['gen_psnr']:.2f}",
                         f"{r['psnr_db']:+.3f}", f"{r['d_y']:+.3f}", f"{r['d_cb']:+.3f}", f"{r['d_cr']:+.3f}"])
    return "\n".join([
        f"Our encoder against the genuine bpgenc 0.9.8 at equal settings ({what}):", "",
        table(["half", "x265 options on top of bpgenc's", "files", "ours bytes", "genuine bytes", "Δ bytes",
               "ours PSNR", "genuine PSNR", "Δ PSNR", "Δ Y", "Δ Cb", "Δ Cr"], rows, align="llrrrrrrrrrr"),
        "", "Δ = ours − genuine (PSNR in dB: RGB, then the Y, Cb, Cr planes). " + verdict, ""])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=40, help="Imagenette val crops (each at q 41, 46, 51)")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "m2m-bpg-tune",
                    help="where the genuine reference encodes go (never the source tree)")
    ap.add_argument("--evaluate-only", action="store_true", help="compare today's hevc.TUNING with x265's defaults, no search")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path, help="the results file the README block is rendered from "
                    "(docsgen/readme_block.py), with the search's details")
    args = ap.parse_args(argv)
    if not BPGENC.exists() or not (SHARED / "imagenette").exists():
        raise SystemExit(f"needs {BPGENC} and {SHARED / 'imagenette'}")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    today = dict(hevc.TUNING)
    jobs = load_jobs(args.crops)
    genuine(jobs, args.cache)
    n_vec = sum(1 for j in jobs if j["name"].endswith(".bpg"))
    what = (f"{n_vec} vector settings of ../shared/bpg-vectors and {args.crops} Imagenette val crops at "
            f"q 41/46/51 -m 9 -f 420; sources alternate between the tuning and the held-out half; "
            f"x265 {bpg.versions()['x265']}")
    if args.evaluate_only:
        tuning, trail = today, []
    else:
        for option in list(CANDIDATES):
            CANDIDATES[option] = [v for v in CANDIDATES[option] if valid(option, v)]
            if not CANDIDATES[option]:
                log(f"x265 {bpg.versions()['x265']} does not take {option}; skipped")
                del CANDIDATES[option]
        tuning, trail = search(jobs, args.passes, log)
    before = {h: evaluate(jobs, {}, h, planes=True) for h in ("tune", "held-out")}
    after = {h: evaluate(jobs, tuning, h, planes=True) for h in ("tune", "held-out")}
    hevc.TUNING.update(today)
    closer_held_out = bool(tuning) and closer(after["held-out"], before["held-out"])
    if args.evaluate_only:
        verdict = (f"tools/bpg uses `{':'.join(f'{k}={v}' for k, v in today.items())}` (hevc.TUNING, found by "
                   f"`python benchmarks/bpg_tune.py` on the tuning half); on the held-out half it is "
                   f"{'closer' if closer_held_out else 'NOT closer'} in both bytes and PSNR."
                   if today else "tools/bpg uses x265's defaults (hevc.TUNING is empty).")
    else:
        adopt = "adopt it" if closer_held_out else "keep x265's defaults"
        verdict = (f"Search on the tuning half found `{':'.join(f'{k}={v}' for k, v in tuning.items()) or 'nothing'}`;"
                   f" on the held-out half it is {'closer' if closer_held_out else 'not closer'} in both bytes and "
                   f"PSNR: {adopt}" + ("" if tuning == today else " (hevc.TUNING differs: update it)") + ".")
    text = markdown(before, after, tuning, verdict, what)
    print(text)
    log(f"{time.perf_counter() - t0:.0f} s")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json:
        from docsgen.readme_block import save
        args.json.parent.mkdir(parents=True, exist_ok=True)
        save(args.json, text, "benchmarks/bpg_tune.py", sys.argv[1:] if argv is None else argv,
             search={"tuning": tuning, "closer_held_out": closer_held_out, "before": before, "after": after,
                     "trail": trail, "candidates": CANDIDATES})


if __name__ == "__main__":
    main()
