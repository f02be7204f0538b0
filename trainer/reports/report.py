"""Table 1, Fig. 4 and Fig. 5 of the paper from whatever has been measured so far.

    python -m trainer.reports.report --runs runs/ --shards shards/ --results reports/results.json --out reports/

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
  ``trainer.evaluation --group``): each group's top-1 on the setting a model was trained on and on
  the clean images, beside the pretrained model (``retention.py``).
- ``report.md``: the tables, the figures and what is still missing.

Fig. 4 and Fig. 5 are made by ``figures.py``; this module makes Table 1 and runs the command.

Runs trained on teacher labels (``--labels teacher``) are their own method, e.g.
"expert (teacher labels)", in every table and plot.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from pipeline.atomic import atomic_output, atomic_write, make_folder
from pipeline.bounded import read_json
from pipeline.markdown import cell as md_cell, table as md_table
from pipeline.setting import Setting
from trainer import vocab
from trainer.clitools import run_click

from . import retention
from .figures import (FIG4_HEADER, cross_eval, default_caption, fig4_rows, fig5_rows, plot_cross_eval,
                      plot_rate_accuracy, rate_accuracy_series, rate_accuracy_table)
from .results import (ALLOW_SELECTED, SELECTED_MARK, SELECTED_NOTE, Result, ResultsError, SettingStats,
                      best_per_cell, check_selection, difference, eval_value, finite, load_manifests, load_results,
                      load_runs, mark, not_cleared, setting_order, single_split, unevaluated_runs)

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
            if row[k] is None:  # no manifest: what trainer.evaluation recorded for the setting
                row[k] = eval_value(results, s, k)
        for m in methods:
            cell = _cell(best, arch, m, s)
            row[f"top1_{m}"] = cell.top1 if cell else None
            if cell is not None and mark([cell]):
                row.setdefault(MARKED, set()).add(f"top1_{m}")
        # same labels on both sides: dataset labels when both ran, else the label-free pair
        row["gain"] = difference(row.get("top1_expert"), row.get("top1_finetune"))
        if row["gain"] is None:
            row["gain"] = difference(row.get("top1_expert+teacher"), row.get("top1_finetune+teacher"))
        if paper_rows is not None:
            st_ = Setting.parse(s)
            row.update(_paper_cells(paper_rows.get((st_.codec, st_.q))))
        rows.append(row)
    return table1_columns(methods, paper_rows is not None), rows


def _cell(best: dict, arch: str | None, mkey: str, setting: str) -> Result | None:
    trained_on = None if mkey == "pretrained" else setting
    return best.get((arch, mkey, trained_on, setting))


# --------------------------------------------------------------------------- paper values

def load_paper(path: str | Path, arch: str) -> dict:
    """paper_table1.json -> {(codec, q): {"psnr", "ssim", "bytes", <method>: top-1}}."""

    try:
        data = read_json(path, "paper table")
        settings = data["settings"]
        archs = sorted({k for s in settings for k, v in s.items() if isinstance(v, dict)})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
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
    cells["paper_gain"] = difference(cells["paper_expert"], cells["paper_finetune"])
    return cells


# --------------------------------------------------------------------------- writers

#: a Table 1 row's keys whose value comes from a checkpoint chosen on the images it scores
MARKED = "_selected_on_scored"


def markdown_table(cols: list[Column], rows: list[dict]) -> str:
    def cell(col: Column, row: dict) -> str:
        value = row.get(col.key)
        if value is None and col.key == "psnr" and row["setting"] == "lossless":
            return "∞"  # x̃ = x: PSNR is infinite, not missing
        return md_cell(value, col.digits) + (f" {SELECTED_MARK}" if col.key in row.get(MARKED, ()) else "")

    align = "".join("l" if c.key == "setting" else "r" for c in cols)
    return md_table([c.title for c in cols], [[cell(c, r) for c in cols] for r in rows], align) + "\n"


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    """Full-precision values; None -> empty field (written atomically)."""
    with atomic_output(path, "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(["" if row.get(h) is None else row[h] for h in header])


def safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "model"


def make_report(results: list[Result], stats: dict[str, SettingStats], out: Path, *, x: str = "bytes",
                paper: str | Path | None = None, paper_arch: str | None = None,
                runs: list | None = None, split: str = "val", caption: str | None = None,
                group_results: list[Result] = ()) -> dict:
    """Write every artefact into ``out``; returns {name: path} of what was written."""
    make_folder(out, "report folder")
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
    md.append(_selected_note([*results, *group_results]))
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
    if any(r.get(MARKED) for r in rows):
        parts.append(SELECTED_NOTE + "\n")
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


def _selected_note(results: list[Result]) -> str:
    """The rows let through with ALLOW_SELECTED, by name (figures and group tables carry no mark)."""
    flagged = sorted({f"`{r.checkpoint or r.weights}` on {r.setting}" for r in results if not_cleared(r)})
    if not flagged:
        return ""
    return f"## Chosen on the scored images, or not recorded\n\n{SELECTED_NOTE}\n\n" + "\n".join(f"- {f}" for f in flagged) + "\n"


def _missing_note(results: list[Result], stats: dict[str, SettingStats], runs: list) -> str:
    lines = ["## Still missing\n"]
    pending = unevaluated_runs(runs, results)
    lines += [f"- run `{run.name}` ({run.method or '?'}, {run.arch or '?'}, trained on {run.trained_on or '?'}) "
              "has no evaluation results: "
              f"run `python -m trainer.evaluation` on `{run.best}`" for run in pending]
    no_manifest = sorted({r.setting for r in results} - set(stats))
    if no_manifest:
        lines.append(f"- no manifest for {', '.join(no_manifest)} (rate and quality as recorded by the evaluation)")
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


# --------------------------------------------------------------------------- CLI

@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--results", "results_paths", multiple=True, type=click.Path(path_type=Path),
              default=[Path("reports/results.json")], show_default=True,
              help="results.json of trainer.evaluation (repeatable).")
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
@click.option(ALLOW_SELECTED, "allow_selected", is_flag=True,
              help="Report rows whose checkpoint was chosen on the images it is scored on, marked "
                   f"{SELECTED_MARK} (refused without it).")
def cli(results_paths, shards, split, runs, out, x, archs, paper, paper_arch, caption, allow_selected):
    """Build Table 1, Fig. 4 and Fig. 5 from manifests and evaluation results."""
    results, stats, written = report(results_paths, shards, out, split=split, runs=runs, x=x, archs=archs,
                                     paper=paper, paper_arch=paper_arch, warn=lambda m: click.echo(m, err=True),
                                     caption=caption, allow_selected=allow_selected)
    click.echo(f"{len(results)} result rows, {len(stats)} manifests -> {out}/")
    for name in sorted(written):
        click.echo(f"  {name}")
    return 0


def report(results_paths, shards, out, *, split: str = "val", runs=None, x: str = "bytes", archs=(),
           paper=None, paper_arch=None, warn=None, caption: str | None = None,
           allow_selected: bool = False) -> tuple[list[Result], dict[str, SettingStats], dict[str, Path]]:
    """The report of the results files and the manifests under ``shards`` (the Python API of the
    command): (result rows used, manifests used, {name: path} written).  Rows scored on the
    images their checkpoint was chosen on are refused unless ``allow_selected`` (then marked)."""
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
    check_selection(every, allow_selected)
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
    return run_click(cli, argv, "python -m trainer.reports.report")


if __name__ == "__main__":
    sys.exit(main())
