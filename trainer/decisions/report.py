"""Table 1, Fig. 4 and Fig. 5 of the paper from whatever has been measured so far.

    python -m trainer.decisions.report --runs runs/ --shards shards/ --results reports/results.json --out reports/

Writes into ``--out``:

- ``table1.md`` / ``table1.csv``: rows = settings (lossless, then each codec by decreasing
  bytes), columns = PSNR, SSIM, bytes/image, bpp of the eval split (manifests) and the top-1
  of each method on the setting it was trained on (pretrained: on every setting), plus the
  expert - fine-tune gain.  One table per architecture.  Blank cells = not measured yet.
  ``--paper paper_table1.json --paper-arch resnet50`` adds the paper's values alongside.
- ``fig4_<arch>.png`` + ``fig4_rate_accuracy.csv`` + ``fig4_rate_accuracy.md``: rate-accuracy
  curves (log x), one panel per codec, one line per method, lossless as a reference line,
  and the same points as a table.  A method trained on one setting only follows that model
  over every setting it was evaluated on; a method with models for several settings takes
  each setting's own model (the paper's Fig. 4).
- ``fig5_<arch>.png`` + ``fig5_cross_eval.csv``: top-1 of models trained on setting A (rows)
  evaluated on setting B (columns).
- ``retention.md`` / ``retention.csv`` (when the results hold rows of class groups,
  ``trainer.eval --group``): each group's top-1 on the setting a model was trained on and on
  the clean images, beside the pretrained model (``decisions/retention.py``).
- ``report.md``: the tables, the figures and what is still missing.

Runs trained on teacher labels (``--labels teacher``) are their own method, e.g.
"expert (teacher labels)", in every table and plot.
"""
from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from pipeline.atomic import atomic_output, atomic_write
from pipeline.markdown import cell as md_cell, table as md_table
from pipeline.setting import Setting
from trainer import vocab
from trainer.clitools import run_click

from . import retention
from .results import (Result, ResultsError, SettingStats, best_per_cell, codec_rank, finite, load_manifests,
                      load_results, load_runs, rate_of, setting_order, single_split, unevaluated_runs)

#: the paper's method columns, in its order
METHODS = vocab.names()
method_name = vocab.title
method_rank = vocab.rank

GAIN = "expert - finetune"


# --------------------------------------------------------------------------- Table 1

@dataclass
class Column:
    key: str          # CSV header
    title: str        # Markdown header
    digits: int = 2


def table1_columns(method_keys: list[str], paper: bool) -> list[Column]:
    cols = [Column("setting", "setting"), Column("psnr", "PSNR (dB)"), Column("ssim", "SSIM", 3),
            Column("bytes", "bytes/image", 0), Column("bpp", "bpp", 3)]
    cols += [Column(f"top1_{m}", f"{method_name(m)} top-1") for m in method_keys]
    cols.append(Column("gain", "expert − fine-tune"))
    if paper:
        cols += [Column("paper_psnr", "paper PSNR"), Column("paper_ssim", "paper SSIM", 3),
                 Column("paper_bytes", "paper bytes", 0)]
        cols += [Column(f"paper_{m}", f"paper {method_name(m)}") for m in METHODS]
        cols.append(Column("paper_gain", "paper gain"))
    return cols


def table_methods(results: list[Result]) -> list[str]:
    """The paper's four methods always (stable table shape), plus any other method seen."""
    keys = set(METHODS) | {r.mkey for r in results}
    return sorted(keys, key=method_rank)


def build_table1(results: list[Result], stats: dict[str, SettingStats], arch: str | None,
                 paper_rows: dict | None = None) -> tuple[list[Column], list[dict]]:
    """Rows of Table 1 for one architecture: dicts keyed by ``Column.key`` (None = blank)."""
    mine = [r for r in results if r.arch == arch]
    best, _ = best_per_cell(r for r in mine if r.matched)
    methods = table_methods(results)  # same columns for every architecture
    settings = setting_order(["lossless", *stats, *(r.setting for r in mine)], stats, mine)
    rows = []
    for s in settings:
        st = stats.get(s)
        row = {k: st and getattr(st, k) for k in ("psnr", "ssim", "bytes", "bpp")}
        row["setting"] = s
        for k in ("psnr", "ssim", "bytes", "bpp"):
            if row[k] is None:  # no manifest: what trainer.eval recorded for the setting
                row[k] = _eval_value(results, s, k)
        for m in methods:
            cell = _cell(best, arch, m, s)
            row[f"top1_{m}"] = cell.top1 if cell else None
        # same labels on both sides: dataset labels when both ran, else the label-free pair
        row["gain"] = _diff(row.get("top1_expert"), row.get("top1_finetune"))
        if row["gain"] is None:
            row["gain"] = _diff(row.get("top1_expert+teacher"), row.get("top1_finetune+teacher"))
        if paper_rows is not None:
            st_ = Setting.parse(s)
            row.update(_paper_cells(paper_rows.get((st_.codec, st_.q))))
        rows.append(row)
    return table1_columns(methods, paper_rows is not None), rows


def _cell(best: dict, arch: str | None, mkey: str, setting: str) -> Result | None:
    trained_on = None if mkey == "pretrained" else setting
    return best.get((arch, mkey, trained_on, setting))


def _eval_value(results: list[Result], setting: str, attr: str) -> float | None:
    """Rate or quality recorded by trainer.eval when the setting has no manifest."""
    return next((getattr(r, attr) for r in results if r.setting == setting and getattr(r, attr) is not None), None)


def _diff(a: float | None, b: float | None) -> float | None:
    # rounded: top-1 values have 2 decimals at most, and 0.12000000000000455 helps nobody
    return None if a is None or b is None else round(a - b, 6)


# --------------------------------------------------------------------------- paper values

def load_paper(path: str | Path, arch: str) -> dict:
    """paper_table1.json -> {(codec, q): {"psnr", "ssim", "bytes", <method>: top-1}}."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        settings = data["settings"]
        archs = sorted({k for s in settings for k, v in s.items() if isinstance(v, dict)})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ResultsError(f"{path}: not a paper table (a JSON object with a 'settings' list; {exc})") from None
    if arch not in archs:
        raise ResultsError(f"{path}: no architecture {arch!r} (the paper has {', '.join(archs)})")
    out = {}
    for s in settings:
        try:
            setting = Setting(s["codec"], s.get("q"))
        except (KeyError, ValueError) as exc:
            raise ResultsError(f"{path}: bad setting entry {s!r} ({exc})") from None
        out[(setting.codec, setting.q)] = {"psnr": s.get("psnr"), "ssim": s.get("ssim"), "bytes": s.get("bytes"),
                                           **(s.get(arch) or {})}
    return out


def _paper_cells(p: dict | None) -> dict:
    p = p or {}
    cells = {"paper_psnr": finite(p.get("psnr")), "paper_ssim": finite(p.get("ssim")),
             "paper_bytes": finite(p.get("bytes"))}
    cells.update({f"paper_{m}": finite(p.get(m)) for m in METHODS})
    cells["paper_gain"] = _diff(cells["paper_expert"], cells["paper_finetune"])
    return cells


# --------------------------------------------------------------------------- writers

def markdown_table(cols: list[Column], rows: list[dict]) -> str:
    def cell(col: Column, row: dict) -> str:
        value = row.get(col.key)
        if value is None and col.key == "psnr" and row["setting"] == "lossless":
            return "∞"  # x̃ = x: PSNR is infinite, not missing
        return md_cell(value, col.digits)

    align = "".join("l" if c.key == "setting" else "r" for c in cols)
    return md_table([c.title for c in cols], [[cell(c, r) for c in cols] for r in rows], align) + "\n"


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    """Full-precision values; None -> empty field (written atomically)."""
    with atomic_output(path, "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(["" if row.get(h) is None else row[h] for h in header])


# --------------------------------------------------------------------------- Fig. 4

@dataclass
class Series:
    """One curve of Fig. 4: one method on one codec's settings, sorted by rate."""
    arch: str
    codec: str
    method: str                # method key
    model: str | None          # the one model followed ("trained on" setting); None: pretrained, or
    #                            each setting's own model (several models of the method)
    settings: list[str]
    x: list[float]
    y: list[float]
    trained_on: list[str | None] = field(default_factory=list)   # per point: the model's training setting

    @property
    def method_label(self) -> str:
        return method_name(self.method) + (f", trained on {self.model}" if self.model else "")

    @property
    def label(self) -> str:
        return f"{self.codec} · {self.method_label}"


def curve_models(results: list[Result], arch: str) -> dict[str, str | None]:
    """Which model each method's curves follow: {method key: its one training setting}, or
    None where the method is the pretrained model or has models trained on several settings
    (then each setting's point is the model trained on it, the paper's Fig. 4)."""
    trained: dict[str, set] = {}
    for r in results:
        if r.arch == arch:
            trained.setdefault(r.mkey, set()).add(r.trained_on)
    return {m: (next(iter(t)) if len(t) == 1 and m != "pretrained" else None) for m, t in trained.items()}


def rate_accuracy_series(results: list[Result], stats: dict[str, SettingStats], arch: str,
                         x: str = "bytes") -> list[Series]:
    """One curve per (codec, method), sorted by rate; lossless gives a one-point series (the
    reference).  A method whose runs were all trained on one setting follows that model over
    every setting it was evaluated on (where training on one setting helps the others);
    a method with models for several settings takes each setting's own model (Table 1's
    cells).  Points whose rate is unknown cannot be placed and are left out."""
    follow = curve_models(results, arch)

    def used(r: Result) -> bool:
        if r.arch != arch:
            return False
        return r.matched if follow.get(r.mkey) is None else r.trained_on == follow[r.mkey]

    best, _ = best_per_cell(r for r in results if used(r))
    groups: dict[tuple[str, str], list[tuple[float, float, str, str | None]]] = {}
    for r in best.values():
        rate = rate_of(r, stats, x)
        if rate is not None and rate > 0:
            groups.setdefault((r.codec, r.mkey), []).append((rate, r.top1, r.setting, r.trained_on))
    out = []
    for (codec, mkey), pts in sorted(groups.items(), key=lambda kv: (codec_rank(kv[0][0]), method_rank(kv[0][1]))):
        pts.sort(key=lambda p: (p[0], p[2]))
        out.append(Series(arch, codec, mkey, follow.get(mkey), [p[2] for p in pts], [p[0] for p in pts],
                          [p[1] for p in pts], [p[3] for p in pts]))
    return out


_METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
CODEC_TITLES = {"jpeg": "JPEG", "j2k": "JPEG 2000", "bpg": "BPG"}
RATE_LABELS = {"bytes": "bytes per image (log scale)", "bpp": "bits per pixel (log scale)"}


def _rate_text(value: float, x: str) -> str:
    if x == "bpp":
        return f"{value:.2f} bpp"
    return f"{value / 1000:.1f} kB" if value >= 1000 else f"{value:.0f} B"


def _tick_text(value: float, x: str) -> str:
    if x == "bpp":
        return f"{value:g}"
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def default_caption(split: str = "val") -> str:
    return (f"top-1: the share of {split} images whose highest-scoring class is their label. "
            "Lossless (dotted) is each model on the uncompressed crops.")


def plot_rate_accuracy(series: list[Series], path: Path, x: str = "bytes", title: str = "", caption: str = ""):
    """Fig. 4 as PNG: one panel per codec (shared axes), one line per method with the setting
    name beside each point, lossless as a dotted reference line per method, the caption
    below.  Returns the Figure: every curve is a line with gid "curve" and label
    ``Series.label``; every reference a line with gid "lossless"; setting names are texts."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    curves = [s for s in series if s.codec != "lossless"]
    refs = [s for s in series if s.codec == "lossless"]
    codecs = sorted({s.codec for s in curves}, key=codec_rank) or ["(nothing measured)"]
    keys = sorted({(s.method, s.method_label) for s in series}, key=lambda k: (method_rank(k[0]), k[1]))
    labels = [k[1] for k in keys]
    colours = plt.get_cmap("tab10")
    style = {lab: (colours(i % 10), _METHOD_MARKERS[i % len(_METHOD_MARKERS)]) for i, lab in enumerate(labels)}

    n = len(codecs)
    handles = [Line2D([], [], color=style[lab][0], marker=style[lab][1], label=lab) for lab in labels]
    if refs:
        handles.append(Line2D([], [], color="0.35", linestyle=":",
                              label=f"lossless: the same model on clean crops ({_rate_text(refs[0].x[0], x)}/image)"))
    ncol = min(len(handles), 3) or 1
    legend_rows = -(-len(handles) // ncol)
    width_in = 1.0 + 3.9 * n
    text = "\n".join(textwrap.wrap(caption, width=int(width_in * 15))) if caption else ""
    caption_rows = text.count("\n") + 1 if text else 0
    # heights in inches: title, legend, panels, x ticks + label, caption
    top_in, bottom_in, panel_in = 0.72 + 0.2 * legend_rows, 0.62 + 0.16 * caption_rows, 3.9
    height = top_in + panel_in + bottom_in
    fig, axes = plt.subplots(1, n, figsize=(width_in, height), dpi=120, sharex=True, sharey=True,
                             squeeze=False)
    axes = axes[0]
    ys = [v for s in series for v in s.y]
    top = min(100.0, max(ys, default=100.0))
    for ax, codec in zip(axes, codecs):
        mine = [s for s in curves if s.codec == codec]
        for s in mine:
            colour, marker = style[s.method_label]
            ax.plot(s.x, s.y, marker=marker, color=colour, linewidth=1.6, markersize=5, label=s.label, gid="curve")
        period = max(2.5 * len(refs), 4.0)     # interleaved dots: equal values stay visible, side by side
        for i, s in enumerate(refs):
            ax.axhline(s.y[0], color=style[s.method_label][0], linestyle=(2.5 * i, (2.0, period - 2.0)),
                       linewidth=1.4, label=s.label, gid="lossless")
        if refs:
            ax.annotate("lossless", (0, max(s.y[0] for s in refs)), xycoords=("axes fraction", "data"),
                        xytext=(3, 2), textcoords="offset points", ha="left", va="bottom", fontsize=7.5,
                        color="0.35")
        # the setting's name once per column of points: below the lowest one (the curves rise
        # to the right, away from it), above the highest where the lowest sits on the floor
        column: dict[str, tuple[float, float, float]] = {}
        for s in mine:
            for st, xv, yv in zip(s.settings, s.x, s.y):
                lo, hi = column.get(st, (xv, yv, yv))[1:]
                column[st] = (xv, min(lo, yv), max(hi, yv))
        for st, (xv, lo, hi) in column.items():
            below = lo > 8
            ax.annotate(st, (xv, lo if below else hi), xytext=(0, -8 if below else 7), textcoords="offset points",
                        ha="center", va="top" if below else "bottom", fontsize=7.5, color="0.2")
        ax.set_title(CODEC_TITLES.get(codec, codec), fontsize=10)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_text(v, x)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.35)
        ax.margins(x=0.15)
    axes[0].set_ylabel("top-1 (%)")
    axes[0].set_ylim(0, min(top + 8, 104) if top > 90 else top + 6)
    fig.text(0.5, (0.16 * caption_rows + 0.12) / height, RATE_LABELS.get(x, x), ha="center", va="bottom",
             fontsize=10)
    if text:
        fig.text(0.012, 0.06 / height, text, fontsize=8, ha="left", va="bottom", color="0.25")
    fig.suptitle(title or "Rate–accuracy", y=1 - 0.08 / height, va="top", fontsize=11)
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.36 / height), ncol=ncol,
                   fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.7 / width_in, right=1 - 0.15 / width_in,
                        bottom=bottom_in / height, top=1 - top_in / height, wspace=0.06)
    with atomic_output(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return fig


def fig4_rows(series: list[Series], x: str) -> list[dict]:
    return [{"arch": s.arch, "codec": s.codec, "method": method_name(s.method), "trained_on": t, "setting": st,
             "x": x, "rate": xv, "top1": yv, "curve": s.label}
            for s in series for st, xv, yv, t in zip(s.settings, s.x, s.y, s.trained_on)]


#: trained_on: the setting the point's model was trained on; curve: the line's label in the figure
FIG4_HEADER = ["arch", "codec", "method", "trained_on", "setting", "x", "rate", "top1", "curve"]


def rate_accuracy_table(series: list[Series], stats: dict[str, SettingStats], results: list[Result],
                        x: str = "bytes") -> str:
    """Fig. 4's points as Markdown: a row per setting (rate and quality from the manifests),
    a column per method curve, and the expert − fine-tune gain where both follow the same model(s)."""
    curves: dict[str, dict[str, float]] = {}
    keys: dict[str, tuple[str, str | None]] = {}
    for s in sorted(series, key=lambda s: method_rank(s.method)):
        curves.setdefault(s.method_label, {}).update(zip(s.settings, s.y))
        keys[s.method_label] = (s.method, s.model)
    settings = setting_order({st for s in series for st in s.settings}, stats, results)
    gains = [(e, f) for e in keys for f in keys
             if keys[e][1] == keys[f][1] and (keys[e][0], keys[f][0]) in (("expert", "finetune"),
                                                                         ("expert+teacher", "finetune+teacher"))]
    header = ["setting", "bytes/image", "bpp", "PSNR (dB)", "SSIM"]
    header += [f"{method_name(m)} top-1" + (f" (trained on {model})" if model else "") for m, model in keys.values()]
    header += ["expert − fine-tune" + (" (teacher labels)" if keys[e][0].endswith(vocab.TEACHER_LABELS) else "")
               for e, _ in gains]
    rows = []
    for st in settings:
        known = stats.get(st)
        rate = {k: (getattr(known, k) if known else None) for k in ("bytes", "bpp", "psnr", "ssim")}
        rate = {k: _eval_value(results, st, k) if v is None else v for k, v in rate.items()}
        psnr = "∞" if rate["psnr"] is None and st == "lossless" else md_cell(rate["psnr"], 2)
        row = [st, md_cell(rate["bytes"], 0), md_cell(rate["bpp"], 3), psnr, md_cell(rate["ssim"], 3)]
        row += [md_cell(c.get(st), 2) for c in curves.values()]
        row += [md_cell(_diff(curves[e].get(st), curves[f].get(st)), 2) for e, f in gains]
        rows.append(row)
    return md_table(header, rows, "l" + "r" * (len(header) - 1)) + "\n"


# --------------------------------------------------------------------------- Fig. 5

@dataclass
class CrossEval:
    arch: str
    rows: list[str]          # row labels ("pretrained", "jpeg-10", "expert: jpeg-10", ...)
    columns: list[str]       # evaluated settings
    values: list[list[float | None]]


def cross_eval(results: list[Result], stats: dict[str, SettingStats], arch: str) -> CrossEval:
    """Top-1 of every model (rows) on every evaluated setting (columns); None = not evaluated."""
    mine = [r for r in results if r.arch == arch]
    best, _ = best_per_cell(mine)
    order = setting_order({r.setting for r in mine} | {r.trained_on for r in mine if r.trained_on},
                          stats, mine)
    rank = {s: i for i, s in enumerate(order)}
    models = sorted({(r.mkey, r.trained_on) for r in mine},
                    key=lambda m: (m[0] != "pretrained", rank.get(m[1], -1), method_rank(m[0])))
    trained_methods = {m for m, t in models if m != "pretrained"}
    columns = [s for s in order if any(r.setting == s for r in mine)]

    def label(mkey: str, trained_on: str | None) -> str:
        if mkey == "pretrained" or trained_on is None:
            return method_name(mkey)
        return trained_on if len(trained_methods) == 1 else f"{method_name(mkey)}: {trained_on}"

    values = [[_top1(best.get((arch, m, t, s))) for s in columns] for m, t in models]
    return CrossEval(arch, [label(m, t) for m, t in models], columns, values)


def _top1(r: Result | None) -> float | None:
    return None if r is None else r.top1


def plot_cross_eval(ce: CrossEval, path: Path, title: str = ""):
    """Fig. 5 heatmap as PNG (grey = not evaluated); returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[math.nan if v is None else v for v in row] for row in ce.values], dtype=float)
    data = data.reshape(len(ce.rows), len(ce.columns))
    # room for the longest row label on the left and the colour bar on the right
    label_in = 0.07 * max((len(r) for r in ce.rows), default=8)
    fig, ax = plt.subplots(figsize=(label_in + 2.2 + 0.8 * max(len(ce.columns), 1),
                                    1.8 + 0.45 * max(len(ce.rows), 1)), dpi=120)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(ce.columns)), ce.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(ce.rows)), ce.rows)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    for (i, j), v in np.ndenumerate(data):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 60 else "white")
    fig.colorbar(im, ax=ax, label="top-1 (%)")
    ax.set_title(title or "Cross-setting top-1")
    fig.tight_layout()
    with atomic_output(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return fig


def fig5_rows(ce: CrossEval) -> list[dict]:
    return [{"arch": ce.arch, "trained_on": row, **{c: v for c, v in zip(ce.columns, vals)}}
            for row, vals in zip(ce.rows, ce.values)]


# --------------------------------------------------------------------------- the report

def safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "model"


def make_report(results: list[Result], stats: dict[str, SettingStats], out: Path, *, x: str = "bytes",
                paper: str | Path | None = None, paper_arch: str | None = None,
                runs: list | None = None, split: str = "val", caption: str | None = None,
                group_results: list[Result] = ()) -> dict:
    """Write every artefact into ``out``; returns {name: path} of what was written."""
    out.mkdir(parents=True, exist_ok=True)
    archs = sorted({r.arch for r in results}) or [None]
    written: dict[str, Path] = {}
    md = [f"# Report\n\nRates and quality: mean over the `{split}` split (manifests). Top-1 in %, "
          "each trained method evaluated on the setting it was trained on; pretrained on every setting. "
          "— = not measured yet.\n"]
    t1_rows, f4_rows, f5_blocks, tables_md, f4_md = [], [], [], [], []
    kept = retention.retention_tables(list(group_results))
    archs = sorted(set(archs) - {None} | {t.arch for t in kept}) or [None]
    if kept:
        atomic_write(out / "retention.md", "\n".join(retention.section(t) for t in kept))
        write_csv(out / "retention.csv", retention.CSV_HEADER, retention.csv_rows(kept))
        written.update({n: out / n for n in ("retention.md", "retention.csv")})
    for arch in archs:
        paper_rows = _paper_for(paper, paper_arch, arch)
        cols, rows = build_table1(results, stats, arch, paper_rows)
        tables_md.append(_table_section(arch, cols, rows, results, paper if paper_rows is not None else None,
                                        paper_arch or arch))
        md.append(tables_md[-1])
        md += [retention.section(t) for t in kept if t.arch == arch]
        t1_rows.append((cols, [{"arch": arch, **r} for r in rows]))
        if arch is None:
            continue
        series = rate_accuracy_series(results, stats, arch, x)
        f4_rows += fig4_rows(series, x)
        png4 = out / f"fig4_{safe_name(arch)}.png"
        plot_rate_accuracy(series, png4, x, f"Rate–accuracy, {arch}", caption or default_caption(split))
        written[png4.name] = png4
        f4_md.append(f"## Rate–accuracy — {arch}\n\n{rate_accuracy_table(series, stats, results, x)}")
        ce = cross_eval(results, stats, arch)
        f5_blocks.append(ce)
        png5 = out / f"fig5_{safe_name(arch)}.png"
        plot_cross_eval(ce, png5, f"Trained on A, evaluated on B — {arch}")
        written[png5.name] = png5
        md.append(f"\n![Fig. 4 — {arch}]({png4.name})\n\n{f4_md[-1]}\n![Fig. 5 — {arch}]({png5.name})\n")
    written.update(_write_tables(out, stats, t1_rows, f4_rows, f5_blocks, tables_md))
    atomic_write(out / "fig4_rate_accuracy.md", "\n".join(f4_md))
    written["fig4_rate_accuracy.md"] = out / "fig4_rate_accuracy.md"
    md.append(_missing_note(results, stats, runs or []))
    atomic_write(out / "report.md", "\n".join(md))
    written["report.md"] = out / "report.md"
    return written


def _paper_for(paper, paper_arch, arch) -> dict | None:
    if paper is None:
        return None
    return load_paper(paper, paper_arch or arch)


def _table_section(arch, cols, rows, results, paper, paper_arch) -> str:
    parts = [f"## Table 1 — {arch or '(no results yet)'}\n"]
    if paper is not None:
        parts.append(f"Columns \"paper …\": {paper_arch} in the paper (`{Path(paper).name}`).\n")
    parts.append(markdown_table(cols, rows))
    parts.append(_duplicates_note(results, arch))
    return "\n".join(p for p in parts if p)


def _write_tables(out: Path, stats, t1_rows, f4_rows, f5_blocks, tables_md) -> dict[str, Path]:
    # One CSV for all archs: the union of columns (teacher-label methods may exist for one arch only).
    header = ["arch"]
    for cols, _ in t1_rows:
        header += [c.key for c in cols if c.key not in header]
    write_csv(out / "table1.csv", header, [r for _, rows in t1_rows for r in rows])
    atomic_write(out / "table1.md", "\n".join(tables_md))
    write_csv(out / "fig4_rate_accuracy.csv", FIG4_HEADER, f4_rows)
    f5_header = ["arch", "trained_on", *setting_order({c for ce in f5_blocks for c in ce.columns}, stats)]
    write_csv(out / "fig5_cross_eval.csv", f5_header, [row for ce in f5_blocks for row in fig5_rows(ce)])
    return {n: out / n for n in ("table1.md", "table1.csv", "fig4_rate_accuracy.csv", "fig5_cross_eval.csv")}


def _duplicates_note(results: list[Result], arch: str | None) -> str:
    _, counts = best_per_cell(r for r in results if r.arch == arch and r.matched)
    dups = [f"{method_name(k[1])} on {k[3]} ({n})" for k, n in sorted(counts.items(), key=str) if n > 1]
    if not dups:
        return ""
    return "Best of several evaluations (count in brackets): " + ", ".join(dups) + ".\n"


def _missing_note(results: list[Result], stats: dict[str, SettingStats], runs: list) -> str:
    lines = ["## Still missing\n"]
    pending = unevaluated_runs(runs, results)
    lines += [f"- run `{run.name}` ({run.method or '?'}, {run.arch or '?'}, trained on {run.trained_on or '?'}) "
              "has no evaluation results: "
              f"run `python -m trainer.eval` on `{run.best}`" for run in pending]
    no_manifest = sorted({r.setting for r in results} - set(stats))
    if no_manifest:
        lines.append(f"- no manifest for {', '.join(no_manifest)} (rate and quality as recorded by the evaluation)")
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


# --------------------------------------------------------------------------- CLI

@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--results", "results_paths", multiple=True, type=click.Path(path_type=Path),
              default=[Path("reports/results.json")], show_default=True,
              help="results.json of trainer.eval (repeatable).")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Shard root; manifests of --split give PSNR, SSIM and bytes.")
@click.option("--split", default="val", show_default=True, help="Evaluation split of the manifests.")
@click.option("--runs", type=click.Path(path_type=Path), default=None,
              help="Run folders: runs without results are listed as missing.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports"), show_default=True)
@click.option("--x", "x", type=click.Choice(["bytes", "bpp"]), default="bytes", show_default=True,
              help="Rate axis of Fig. 4.")
@click.option("--arch", "archs", multiple=True, help="Only these architectures (repeatable).")
@click.option("--paper", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="paper_table1.json: add the paper's values beside ours.")
@click.option("--paper-arch", default=None, help="Architecture of the paper's columns (default: each table's).")
@click.option("--caption", default=None,
              help="Caption under Fig. 4: what top-1 means for these labels (default: plain top-1).")
def cli(results_paths, shards, split, runs, out, x, archs, paper, paper_arch, caption):
    """Build Table 1, Fig. 4 and Fig. 5 from manifests and evaluation results."""
    results, stats, written = report(results_paths, shards, out, split=split, runs=runs, x=x, archs=archs,
                                     paper=paper, paper_arch=paper_arch, warn=lambda m: click.echo(m, err=True),
                                     caption=caption)
    click.echo(f"{len(results)} result rows, {len(stats)} manifests -> {out}/")
    for name in sorted(written):
        click.echo(f"  {name}")
    return 0


def report(results_paths, shards, out, *, split: str = "val", runs=None, x: str = "bytes", archs=(),
           paper=None, paper_arch=None, warn=None,
           caption: str | None = None) -> tuple[list[Result], dict[str, SettingStats], dict[str, Path]]:
    """The report of the results files and the manifests under ``shards`` (the Python API of the
    command): (result rows used, manifests used, {name: path} written)."""
    warn = warn or (lambda m: None)
    results_paths = [Path(p) for p in ([results_paths] if isinstance(results_paths, (str, Path)) else results_paths)]
    present = [p for p in results_paths if p.exists()]
    for p in results_paths:
        if not p.exists():
            warn(f"warning: {p} does not exist yet; reporting without it")
    every = load_results(present, groups=True)
    stats = load_manifests(shards, split)
    if archs:
        every = [r for r in every if r.arch in archs]
    every, dropped = single_split(every, split)
    results = [r for r in every if r.group is None]
    group_results = [r for r in every if r.group is not None]
    if dropped:
        warn(f"warning: results of split(s) {', '.join(dropped)} left out: the report is on {split}")
    if not results and not group_results and not stats:
        raise ResultsError("nothing to report: no results rows and no manifests "
                           f"(looked for {', '.join(map(str, results_paths))} and {shards}/{split}/*/manifest.json)")
    written = make_report(results, stats, Path(out), x=x, paper=paper, paper_arch=paper_arch,
                          runs=load_runs(runs), split=split, caption=caption,
                          group_results=group_results)
    return results, stats, written


def main(argv: list[str] | None = None) -> int:
    """Entry point callable from tests: returns the exit status instead of exiting."""
    return run_click(cli, argv, "python -m trainer.decisions.report")


if __name__ == "__main__":
    sys.exit(main())
