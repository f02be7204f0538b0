"""The figures of the docs, drawn from the committed results files by one command.

    python experiments/figures.py                      # every figure into docs/
    python experiments/figures.py --out /some/dir --only imagenette

``FIGURES`` is the registry (file name -> drawer, source files).  Each figure reads only
committed files: the experiments' results (mean ± sample std over seeds, through the same
aggregation as the tables of docs/results.md) and the benchmarks' results files (the cells of
their tables).  The deployment figure is ``experiments/deployment.py``'s own drawer.  Fixed
size and dpi, the Agg backend and no creation metadata, so that drawing again from the same
files gives the same picture.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from trainer import methods  # noqa: E402
from trainer.clitools import UserError, run_click  # noqa: E402

DPI = 110
#: metadata that would differ between two drawings (matplotlib's version) is left out
METADATA = {"Software": None}

IMAGENETTE = "experiments/results/imagenette-cpu.json"
EXTENDED = "experiments/results/imagenette-cpu-extended.json"
RETENTION = "experiments/results/retention-cpu.json"
DEPLOYMENT = "experiments/results/deployment-cpu.json"
DEPLOYMENT_VARIANTS = "experiments/results/deployment-variants-cpu.json"
PIPELINE = "benchmarks/results/pipeline.json"
LOADER = "benchmarks/results/loader.json"
TRAINER = "benchmarks/results/trainer.json"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _legend_below(fig, ax, ncol: int) -> None:
    """One legend under the panels, where it hides no bar."""
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, metadata=METADATA)
    _plt().close(fig)
    return out


def _bars(ax, groups: list[str], series: list[tuple[str, list[list[float]]]]) -> None:
    """Grouped bars: one group per x label, one bar per series, height the mean and whisker
    the sample std of that cell's values (no whisker for a single value, no bar for none)."""
    width = 0.8 / max(len(series), 1)
    for i, (label, cells) in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        means = [statistics.mean(v) if v else float("nan") for v in cells]
        ax.bar(xs, means, width * 0.95, label=label, color=f"C{i}")
        spread = [(x, m, statistics.stdev(v)) for x, m, v in zip(xs, means, cells) if len(v) > 1]
        if spread:
            ax.errorbar([x for x, _, _ in spread], [m for _, m, _ in spread], yerr=[s for _, _, s in spread],
                        fmt="none", ecolor="k", capsize=3, linewidth=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(axis="y", alpha=0.3)


def _meta(results: Path) -> dict:
    from experiments.summarize import meta_path
    mp = meta_path(results)
    return json.loads(mp.read_text(encoding="utf-8")) if mp.exists() else {}


def imagenette(root: Path, out: Path) -> Path:
    """1000-way top-1 and top1_present per setting and method, each model on its own setting."""
    from experiments.summarize import load_rows, own_cells

    results = root / IMAGENETTE
    rows = load_rows([results])
    meta = _meta(results)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, metric, title in ((axes[0], "top1", "1000-way top-1"),
                              (axes[1], "top1_present", "top-1 over the classes present")):
        acc, _ = own_cells(rows, metric)
        settings = sorted({s for s, _ in acc})
        keys = sorted({k for _, k in acc}, key=methods.rank)
        _bars(ax, settings, [(methods.title(k), [list(acc.get((s, k), [])) for s in settings]) for k in keys])
        ax.set_title(title)
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("% of the val images")
    seeds = len(meta.get("seeds") or [])
    fig.suptitle(f"Imagenette, {meta.get('arch', '?')}: mean ± sample std over {seeds} seed(s)", fontsize=10)
    _legend_below(fig, axes[0], 4)
    return _save(fig, out)


def retention(root: Path, out: Path) -> Path:
    """Per trained setting: 1000-way top-1 of each class group on the model's own setting and
    on the clean images, per method (the first retention table of docs/results.md)."""
    from experiments.summarize import load_rows
    from trainer.reports.results import results_from_rows
    from trainer.reports.retention import column_title, retention_tables

    rows = load_rows([root / RETENTION])
    tables = retention_tables(results_from_rows([r for r in rows if r.get("group") is not None]))
    if not tables:
        raise UserError(f"{RETENTION}: no rows of class groups")
    t = tables[0]
    trained = list(dict.fromkeys(r.trained_on for r in t.rows))
    plt = _plt()
    fig, axes = plt.subplots(1, len(trained), figsize=(5.2 * len(trained), 3.8), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], trained):
        mine = [r for r in t.rows if r.trained_on == setting]
        _bars(ax, [column_title(g, w) for g, w in t.columns],
              [(methods.title(r.method), [r.cell(g, w, "top1").values for g, w in t.columns]) for r in mine])
        ax.set_title(f"trained on {setting}")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].set_ylabel("1000-way top-1 (%)")
    fig.suptitle(f"Retention, {t.arch}: A = trained classes, B = held out; mean ± sample std over seeds",
                 fontsize=10)
    _legend_below(fig, axes[0][0], 4)
    return _save(fig, out)


def codecs(root: Path, out: Path) -> Path:
    """Top-1 against bytes per image at the harsh end: the paper's settings of the Imagenette
    control and each new codec's lowest-rate setting, pretrained and expert, each model on its
    own setting (docs/codecs.md)."""
    from experiments.summarize import load_rows, own_cells

    rows = load_rows([root / IMAGENETTE, root / EXTENDED])
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0), sharey=True)
    for ax, metric, title in ((axes[0], "top1", "1000-way top-1"),
                              (axes[1], "top1_present", "top-1 over the classes present")):
        acc, info = own_cells(rows, metric)
        settings = sorted({s for s, _ in acc}, key=lambda s: info[s].get("bytes", 0))
        for i, s in enumerate(settings):
            for key, marker, fill in (("pretrained", "o", "none"), ("expert", "s", f"C{i}")):
                v = acc.get((s, key))
                if not v:
                    continue
                ax.errorbar([info[s]["bytes"]], [statistics.mean(v)],
                            yerr=[statistics.stdev(v)] if len(v) > 1 else None, fmt=marker, color=f"C{i}",
                            markerfacecolor=fill, capsize=3, label=f"{s} {methods.title(key)}")
        ax.axvline(761, color="0.5", linestyle="--", linewidth=1)
        ax.text(761, 2, " 761 B (j2k-200)", fontsize=7, color="0.4")
        ax.set_xscale("log")
        ax.set_xlabel("mean bytes per 224² crop")
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of the val images")
    fig.suptitle("Imagenette, each setting's pretrained (hollow) and expert (filled) score; "
                 "mean ± sample std over seeds", fontsize=10)
    _legend_below(fig, axes[1], 5)
    return _save(fig, out)


def deployment(root: Path, out: Path) -> Path:
    from experiments.deployment import figure
    return figure(root / DEPLOYMENT, out)


def deployment_variants(root: Path, out: Path) -> Path:
    from experiments.deployment import figure
    return figure(root / DEPLOYMENT_VARIANTS, out)


def _number(text: str) -> float | None:
    text = text.strip().removesuffix("x")
    try:
        return float(text)
    except ValueError:
        return None   # "—" or empty: not measured


def table_rows(path: Path, first: str) -> list[dict]:
    """The rows of the table whose first column is ``first`` in a benchmark's results file,
    as {column: cell text}."""
    from docsgen.readme_block import load
    for part in load(path)["parts"]:
        table = part.get("table")
        if table and table["header"][0] == first:
            return [dict(zip(table["header"], row)) for row in table["rows"]]
    raise UserError(f"{path}: no table starting with column {first!r}")


def pipeline_throughput(root: Path, out: Path) -> Path:
    """Images per second per setting on 1 and 2 cores (the pipeline benchmark's table)."""
    rows = table_rows(root / PIPELINE, "setting")
    settings = [r["setting"] for r in rows]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    _bars(ax, settings, [(col, [[v] if (v := _number(r[col])) is not None else [] for r in rows])
                         for col in ("img/s 1 core", "img/s 2 cores")])
    ax.set_ylabel("images per second")
    ax.set_title("Shard pipeline throughput per setting (load, crop, encode, decode, metrics, write)", fontsize=10)
    _legend_below(fig, ax, 2)
    return _save(fig, out)


def loader_step(root: Path, out: Path) -> Path:
    """The loader's cost against reading and decoding alone (loader.json), and the loader's and
    the end-to-end rate against the training step per mode (trainer.json)."""
    loader = table_rows(root / LOADER, "setting")
    trainer = table_rows(root / TRAINER, "mode")
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 3]})
    _bars(left, [r["setting"] for r in loader], [("loader, 1 worker / tar + decode",
                                                  [[_number(r["ratio"])] for r in loader])])
    left.axhline(1.2, color="k", linestyle=":", linewidth=1, label="goal: at most 1.2")
    left.set_ylabel("CPU time ratio")
    left.set_title("Loader cost per sample", fontsize=10)
    left.set_ylim(0, 1.5)
    left.legend(fontsize=7, loc="upper left")
    _bars(right, [r["mode"] for r in trainer],
          [(col, [[_number(r[col])] for r in trainer]) for col in ("loader / step", "end to end / step")])
    right.set_yscale("log")
    right.set_ylim(0.5, 1000)
    right.axhline(1.0, color="k", linestyle=":", linewidth=1, label="the training step's rate")
    right.set_ylabel("rate / training step rate")
    right.set_title("Loader and end to end against the training step (CPU)", fontsize=10)
    right.legend(fontsize=7, loc="upper right", ncol=3)
    fig.tight_layout()
    return _save(fig, out)


#: file name -> (drawer, the committed files it reads)
FIGURES = {
    "imagenette.png": (imagenette, (IMAGENETTE,)),
    "retention.png": (retention, (RETENTION,)),
    "deployment.png": (deployment, (DEPLOYMENT,)),
    "deployment-variants.png": (deployment_variants, (DEPLOYMENT_VARIANTS,)),
    "codecs-rate-accuracy.png": (codecs, (IMAGENETTE, EXTENDED)),
    "pipeline-throughput.png": (pipeline_throughput, (PIPELINE,)),
    "loader-step.png": (loader_step, (LOADER, TRAINER)),
}


def draw(out_dir: Path, names: list[str] | None = None, root: Path = ROOT) -> list[Path]:
    """Draw the named figures (all by default) into ``out_dir``."""
    unknown = sorted(set(names or []) - {n.removesuffix(".png") for n in FIGURES})
    if unknown:
        raise UserError(f"--only {', '.join(unknown)}: not a figure "
                        f"({', '.join(n.removesuffix('.png') for n in FIGURES)})")
    written = []
    for name, (drawer, sources) in FIGURES.items():
        if names and name.removesuffix(".png") not in names:
            continue
        for s in sources:
            if not (root / s).is_file():
                raise UserError(f"{s}: no such results file (the figure {name} is drawn from it)")
        written.append(drawer(Path(root), Path(out_dir) / name))
    return written


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs"), show_default=True,
              help="Folder the PNG files are written to.")
@click.option("--only", multiple=True, metavar="NAME",
              help=f"Only this figure (repeatable): {', '.join(n.removesuffix('.png') for n in FIGURES)}.")
def cli(out, only):
    """The docs' figures from the committed results files."""
    for path in draw(out, list(only)):
        click.echo(path)
    return 0


def main(argv=None) -> int:
    return run_click(cli, argv, "experiments/figures.py")


if __name__ == "__main__":
    sys.exit(main())
