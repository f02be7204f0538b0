"""Fig. 4 (rate-accuracy) and Fig. 5 (cross-setting) of the paper: their points from the
results, their tables, and their plots (matplotlib, imported when a plot is drawn)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.atomic import atomic_output
from pipeline.markdown import cell as md_cell, table as md_table
from trainer import vocab

from .results import (Result, SettingStats, best_per_cell, codec_rank, codec_title, difference, eval_value, rate_of,
                      setting_order)

method_name = vocab.title
method_rank = vocab.rank


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
        ax.set_title(codec_title(codec), fontsize=10)
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
        rate = {k: eval_value(results, st, k) if v is None else v for k, v in rate.items()}
        psnr = "∞" if rate["psnr"] is None and st == "lossless" else md_cell(rate["psnr"], 2)
        row = [st, md_cell(rate["bytes"], 0), md_cell(rate["bpp"], 3), psnr, md_cell(rate["ssim"], 3)]
        row += [md_cell(c.get(st), 2) for c in curves.values()]
        row += [md_cell(difference(curves[e].get(st), curves[f].get(st)), 2) for e, f in gains]
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
