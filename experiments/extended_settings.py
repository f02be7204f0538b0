"""WebP, AVIF and JPEG XL at the paper's three JPEG 2000 rates (2003, 761 and 390 bytes a
224² Imagenette crop): the ``extended`` settings of :mod:`pipeline.setting`.

    python experiments/extended_settings.py search  --src ../shared/imagenette  # bisect q on a subset
    python experiments/extended_settings.py confirm --src ../shared/imagenette --limit 1000
    python experiments/extended_settings.py render                              # docs/codecs.md table

``search``: for every new codec, the integer quality whose mean bytes on a seeded subset of
val crops (``--subset``, the pipeline's crop rule) come closest to each target, by bisection
on q (mean bytes grow with q; where they do not, the nearest evaluated q wins).  It prints
the qualities; :data:`pipeline.setting.EXTENDED_SETTINGS` names them.
``confirm``: builds the extended settings, their neighbouring qualities (q - 1, q + 1) and
the paper's three J2K settings with the real pipeline (``pipeline.build.build``, one pass,
one worker) on the first ``--limit`` val images of the pipeline's order, and writes their
manifests' means and the environment to ``docs/results/extended-settings.json``.  ``render``: that JSON as a Markdown table in
``docs/codecs.md``, between the ``extended-settings`` markers.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write, atomic_write_json  # noqa: E402
from pipeline.setting import EXTENDED_SETTINGS, Setting  # noqa: E402

#: the paper's J2K settings and their rates on these crops (bytes a crop): the targets
J2K_TARGETS = {"j2k-75": 2003, "j2k-200": 761, "j2k-400": 390}
NEW_CODECS = ("webp", "avif", "jxl")
RESULTS = ROOT / "docs" / "results" / "extended-settings.json"
SEARCH = ROOT / "docs" / "results" / "extended-settings-search.json"
DOC = ROOT / "docs" / "codecs.md"
START, END = "<!-- extended-settings:start -->", "<!-- extended-settings:end -->"


def _subset_crops(src: Path, n: int, seed: int):
    import numpy as np

    from pipeline.crops import load_crop
    from pipeline.sources import list_source

    items = list_source(src, "val").items
    pick = sorted(np.random.default_rng(seed).choice(len(items), size=min(n, len(items)), replace=False))
    return [load_crop(items[i].path) for i in pick]


def search(src: Path, n: int, seed: int) -> dict:
    """{"chosen": {codec: {j2k setting: q}}, "evaluated": {codec: {q: mean bytes}}}, and a line
    per evaluated q on stderr."""
    import numpy as np

    from pipeline.codecs import create

    crops = _subset_crops(src, n, seed)
    chosen: dict[str, dict[str, int]] = {}
    evaluated: dict[str, dict[int, float]] = {}
    for name in NEW_CODECS:
        lo_q, hi_q = (int(v) for v in create(name, 50).q_range)
        cache = evaluated[name] = {}

        def mean_bytes(q: int) -> float:
            if q not in cache:
                codec = create(name, q)
                t0 = time.perf_counter()
                cache[q] = float(np.mean([len(codec.encode(c)) for c in crops]))
                print(f"{name} q={q}: {cache[q]:.1f} bytes ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            return cache[q]

        chosen[name] = {}
        for setting, target in J2K_TARGETS.items():
            lo, hi = lo_q, hi_q          # smallest q with mean >= target, by bisection
            while lo < hi:
                mid = (lo + hi) // 2
                if mean_bytes(mid) >= target:
                    hi = mid
                else:
                    lo = mid + 1
            candidates = {q for q in (lo - 1, lo, lo + 1) if lo_q <= q <= hi_q}
            for q in candidates:
                mean_bytes(q)
            chosen[name][setting] = min(cache, key=lambda q: (abs(cache[q] - target), q))
    return {"subset": n, "seed": seed, "chosen": chosen,
            "evaluated": {c: {q: round(v, 1) for q, v in sorted(e.items())} for c, e in evaluated.items()}}


def _environment(images: int | None) -> dict:
    from pipeline.codecs import get

    versions = {}
    for name in NEW_CODECS + ("j2k",):
        versions.update(get(name).versions())
    return {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "versions": versions, "images": images}


def _neighbours(settings: list[Setting], codecs: tuple[str, ...] = NEW_CODECS) -> list[Setting]:
    """q - 1 and q + 1 of every extended setting of ``codecs`` above its codec's lowest quality
    (the lowest one stands for the rates below what the codec reaches), so that the
    confirmation also shows that no neighbouring quality is closer on these images."""
    from pipeline.codecs import get

    names = {s.name for s in settings}
    out = []
    for s in settings:
        lo, hi = get(s.codec).q_range
        if s.q > lo and s.codec in codecs:
            out += [Setting(s.codec, q) for q in (s.q - 1, s.q + 1) if lo <= q <= hi]
    return [n for n in dict.fromkeys(out) if n.name not in names]


def _row(s: Setting, manifest: dict) -> dict:
    from pipeline.codecs import create

    return {"setting": s.name, "codec": s.codec, "q": s.q, "params": create(s.codec, s.q).params(),
            "count": manifest["count"], "failed": len(manifest["failed"]),
            **{k: manifest["mean"][k] for k in ("bytes", "bpp", "psnr", "ssim")}}


def _reusable(previous: Path | None, environment: dict) -> dict[str, dict]:
    """Rows of an earlier results file measured on the same images with the same libraries."""
    if previous is None:
        return {}
    old = json.loads(previous.read_text())
    if old["environment"]["versions"] != environment["versions"] or old["environment"]["images"] != environment[
            "images"]:
        raise click.ClickException(f"{previous}: measured on other images or with other library versions")
    return {r["setting"]: r for r in old["settings"] + old.get("neighbours", [])}


def confirm(src: Path, limit: int | None, out: Path, jobs: int = 1, reuse: Path | None = None,
            neighbours_of: tuple[str, ...] = NEW_CODECS) -> dict:
    from pipeline.build import build
    from pipeline.codecs import create

    extended = [Setting.parse(s) for s in EXTENDED_SETTINGS]
    settings = extended + [Setting.parse(s) for s in J2K_TARGETS]
    neighbours = _neighbours(extended, neighbours_of)
    environment = _environment(limit)
    reused = {name: r for name, r in _reusable(reuse, environment).items()
              if r["params"] == create(r["codec"], r["q"]).params()}
    todo = [s for s in settings + neighbours if s.name not in reused]
    seconds = 0.0
    manifests = {}
    if todo:
        with tempfile.TemporaryDirectory(prefix="extended-settings-") as tmp:
            t0 = time.perf_counter()
            manifests = build(src, "val", [(s.codec, s.q) for s in todo], tmp, shard_size=250, jobs=jobs,
                              limit=limit, progress=False)
            seconds = time.perf_counter() - t0

    def row(s: Setting) -> dict:
        if s.name in reused:
            return {k: v for k, v in reused[s.name].items() if k != "closest_to"}
        return _row(s, manifests[s.name])

    rows = [row(s) for s in settings]
    for r in rows:   # the J2K rates each setting is its codec's closest to, on these images
        r["closest_to"] = [j2k for j2k, target in J2K_TARGETS.items() if r["codec"] != "j2k" and r is min(
            (o for o in rows if o["codec"] == r["codec"]), key=lambda o: abs(o["bytes"] - target))]
    result = {"what": "mean bytes, bpp, PSNR (dB) and SSIM of each setting on 224x224 Imagenette val crops "
                      "(Resize(256) + CenterCrop(224)), built by pipeline.build.build",
              "src": "imagenette (val)", "order": "the pipeline's default order (mixed, seed 0)",
              "environment": environment, "neighbours_of": list(neighbours_of), "built": [s.name for s in todo], "build_jobs": jobs,
              "build_seconds": round(seconds, 1), "reused": sorted(set(reused) & {s.name for s in settings + neighbours}),
              "settings": rows, "neighbours": [row(s) for s in neighbours]}
    atomic_write_json(out, result)
    return result


def render_table(result: dict) -> str:
    rows = result["settings"]
    lines = ["| setting | codec | q | closest to | mean bytes | bpp | PSNR (dB) | SSIM |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ref = ", ".join(f"{j} ({J2K_TARGETS[j]} B)" for j in r["closest_to"]) or "(the paper's rate)"
        lines.append(f"| {r['setting']} | {r['codec']} | {r['q']:g} | {ref} | {r['bytes']:.0f} | {r['bpp']:.4f} "
                     f"| {r['psnr']:.2f} | {r['ssim']:.4f} |")
    env = result["environment"]
    v = env["versions"]
    lines.append("")
    lines.append(f"{rows[0]['count']} val crops; Pillow {v.get('pillow')}, libwebp {v.get('libwebp')}, "
                 f"libavif {v.get('libavif')} ({v.get('av1_codecs')}), imagecodecs {v.get('imagecodecs')} "
                 f"with libjxl {v.get('libjxl')}, glymur {v.get('glymur')} / OpenJPEG "
                 f"{v.get('openjpeg_encoder')}; {env['machine']}, Python {env['python']}.  Neighbouring qualities "
                 "(q - 1, q + 1) measured on the same crops: " + ", ".join(
                     f"{n['setting']} {n['bytes']:.0f} B" for n in result.get("neighbours", [])) + ".")
    return "\n".join(lines)


def render(results: Path, doc: Path) -> None:
    text = doc.read_text()
    if START not in text or END not in text:
        raise click.ClickException(f"{doc}: no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    table = render_table(json.loads(results.read_text()))
    atomic_write(doc, f"{head}{START}\n{table}\n{END}{tail}")


@click.group()
def cli():
    """Find, confirm and tabulate the extended settings."""


@cli.command("search")
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--subset", default=300, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default=SEARCH, show_default=True, type=click.Path(dir_okay=False, path_type=Path))
def search_cmd(src, subset, seed, out):
    """Bisect each new codec's quality on a seeded subset of val crops."""
    result = {"what": "mean bytes of each evaluated quality on a seeded subset of Imagenette val crops "
                      "(Resize(256) + CenterCrop(224)), by experiments/extended_settings.py search",
              "src": "imagenette (val)", **search(src, subset, seed), "environment": _environment(subset)}
    atomic_write_json(out, result)
    names = dict.fromkeys(f"{c}-{q}" for c in NEW_CODECS for q in result["chosen"][c].values())
    print("EXTENDED_SETTINGS = (" + ", ".join(f'"{n}"' for n in names) + ")")


@cli.command("confirm")
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--limit", default=None, type=click.IntRange(1), help="The first N val images of the pipeline's "
              "order (default: all).")
@click.option("--out", default=RESULTS, show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1))
@click.option("--reuse", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An earlier results file: its rows measured on the same images with the same library versions "
                   "and codec parameters are kept, the rest built.")
@click.option("--neighbours", "neighbours_of", default=",".join(NEW_CODECS), show_default=True,
              help="Codecs whose settings' neighbouring qualities are built too (comma-separated; '' for none).")
def confirm_cmd(src, limit, out, jobs, reuse, neighbours_of):
    """Build the extended settings, their neighbours and the J2K settings; write the results JSON."""
    result = confirm(src, limit, out, jobs, reuse, tuple(c for c in neighbours_of.split(",") if c))
    print(render_table(result))


@cli.command("render")
@click.option("--results", default=RESULTS, show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--doc", default=DOC, show_default=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def render_cmd(results, doc):
    """Write the results table into docs/codecs.md between the markers."""
    render(results, doc)


if __name__ == "__main__":
    cli()
