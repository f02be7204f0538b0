"""The experiment tables of docs/results.md from results files (``trainer.evaluation`` rows), mean ± sample
std over seeds.  Four views:

- **table1** (the default for rows without class groups): top-1 per (setting, method), each
  model evaluated on the setting it was trained on (pretrained: on each setting).  Runs on
  teacher labels (``--labels teacher``) are their own column, named as everywhere else
  ("expert (teacher labels)", method key ``expert+teacher``: ``trainer.methods``).
- **retention** (the default when the rows have class groups, ``trainer.evaluation --group``):
  each group's top-1 on the model's own setting and on the clean images, beside the
  pretrained model (``trainer.reports.retention``).
- **deployment** (the rows of ``experiments/deployment.py``): every model (pretrained,
  specialists, generalists, per ``--bn`` mode) on every val setting, Fig. 5 style, and the
  deployment targets each met or missed.
- **compare** (``--compare LABEL=FILE`` twice or more): the same (setting, method) cells of
  several results files side by side, e.g. mixed vs class-sorted shards.

A results file ``X.json`` may have ``X.meta.json`` beside it (written by the experiment
scripts): its budget is printed under the tables.

    python experiments/summarize.py runs/experiments/imagenette/results.json
    python experiments/summarize.py experiments/results/imagenette-cpu.json --readme docs/results.md --block imagenette
    python experiments/summarize.py --all-blocks docs/results.md      # every block of RESULTS_PAGE
    python experiments/summarize.py --compare mixed=a.json --compare sorted=b.json --setting j2k-200
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from trainer import methods  # noqa: E402
from trainer.clitools import UserError, run_click  # noqa: E402

from docsgen.readme_block import BLOCKS, RESULTS_PAGE  # noqa: E402 - the registry of the generated blocks
from trainer.reports.results import (ALLOW_SELECTED, SELECTED_MARK, SELECTED_NOTE, check_selection,  # noqa: E402
                               not_cleared, selection_unknown)

METRIC_NOTES = {"top1": "top1: arg-max over all 1000 ImageNet classes",
                "top1_present": "top1_present: arg-max over the classes present in the data only, e.g. Imagenette's 10"}


def column(row: dict) -> str:
    """The method key of a results row (the column it goes to)."""
    return methods.key(row["method"], row.get("labels"))


def _cell(v: list[float]) -> str:
    if not v:
        return "—"
    return (f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
            + (f" {SELECTED_MARK}" if getattr(v, "marked", False) else ""))


def _selected_note(rows: list[dict]) -> str:
    text = f"\n\n{SELECTED_NOTE}" if any(not_cleared(r) for r in rows) else ""
    unknown = sum(selection_unknown(r) for r in rows if r.get("group") is None)
    if unknown:
        text += (f"\n\n{unknown} row(s) of checkpoints that do not record what chose them (written before "
                 f"they did): whether they were chosen on the scored images is unknown.")
    return text


def _gain(e: list[float], f: list[float]) -> str | None:
    return f"{statistics.mean(e) - statistics.mean(f):+.2f}" if e and f else None


class Values(list):
    """The values of one table cell; ``marked``: one of them comes from a checkpoint chosen on
    the images it is scored on (let through with --allow-selected-on-scored)."""
    marked = False


def own_cells(rows: list[dict], metric: str) -> tuple[dict[tuple[str, str], Values], dict[str, dict]]:
    """{(setting, method key): values} of the whole-setting rows of models on their own setting
    (pretrained on every setting), and {setting: {"bytes": bytes/img, "psnr": dB}}."""
    acc: dict[tuple[str, str], Values] = defaultdict(Values)
    info: dict[str, dict] = defaultdict(dict)
    for r in rows:
        if r.get("group") is not None:
            continue
        if (r["method"] == "pretrained" or r.get("trained_on") == r["setting"]) and r.get(metric) is not None:
            acc[(r["setting"], column(r))].append(r[metric])
            acc[(r["setting"], column(r))].marked |= not_cleared(r)
            for k, col in (("bytes", "mean_bytes"), ("psnr", "mean_psnr")):
                if r.get(col) is not None:
                    info[r["setting"]][k] = r[col]
    return acc, info


def summarize(rows: list[dict], metric: str = "top1") -> str:
    acc, info = own_cells(rows, metric)
    settings = sorted({s for s, _ in acc})
    keys = sorted({k for _, k in acc}, key=methods.rank)
    seeds = max((len(v) for (s, k), v in acc.items() if k != "pretrained"), default=1)
    body = []
    for s in settings:
        gain = _gain(acc.get((s, "expert"), []), acc.get((s, "finetune"), []))
        nbytes = f"{info[s]['bytes']:.0f}" if info[s].get("bytes") else None
        body.append([s, nbytes, *(_cell(acc.get((s, k), [])) for k in keys), gain])
    header = ["setting", "bytes/img", *(methods.title(k) for k in keys), "expert − fine-tune"]
    return f"{metric} (%, mean ± sample std over {seeds} seed(s)):\n\n" + table(header, body)


def report(rows: list[dict]) -> str:
    text = summarize(rows, "top1") + f"\n\n({METRIC_NOTES['top1']})"
    if any(r.get("top1_present") is not None for r in rows if r.get("group") is None):
        text += "\n\n" + summarize(rows, "top1_present") + f"\n\n({METRIC_NOTES['top1_present']})"
    return text + _selected_note(rows)


def retention_report(rows: list[dict]) -> str:
    """The retention tables (1000-way top-1, then top1_present) of rows with class groups."""
    from trainer.reports.results import results_from_rows
    from trainer.reports.retention import markdown, retention_tables

    tables = retention_tables(results_from_rows([r for r in rows if r.get("group") is not None]))
    if not tables:
        raise UserError("no rows of class groups in the results (evaluate with trainer.evaluation --group)")
    parts = []
    for t in tables:
        n = max((len(c.values) for r in t.rows if r.method != "pretrained" for m in r.cells.values()
                 for c in m.values()), default=1)
        arch = f" — {t.arch}" if len(tables) > 1 else ""
        parts.append(f"1000-way top-1{arch} (%, mean ± sample std over {n} seed(s)):\n\n" + markdown(t, "top1"))
        parts.append(f"top1_present{arch} (%, arg-max over the group's own classes):\n\n"
                     + markdown(t, "top1_present"))
    return "\n\n".join(parts) + _selected_note(rows)


#: the deployment targets: (what, the model's setting, the reference, the largest shortfall in points)
DEPLOYMENT_TARGETS = (
    ("generalist within 1.5 points of the specialist on the specialist's setting", 1.5),
    ("generalist within 1 point of pretrained on lossless", 1.0),
    ("--bn frozen specialist within 3 points of pretrained on lossless", 3.0),
)


def _deployment_cells(rows: list[dict], metric: str) -> dict[tuple, list[float]]:
    """{(model label, setting): values over seeds} of a deployment results file's rows; the label
    is ("pretrained",), ("specialist", setting, bn) or ("generalist", bn)."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("group") is not None or r.get(metric) is None or "model" not in r:
            continue
        kind = r["model"]
        if kind == "pretrained":
            label = ("pretrained",)
        elif kind == "specialist":
            label = ("specialist", ",".join(r.get("trained_settings") or []), r.get("bn"))
        elif kind == "bn-stats":
            label = ("bn-stats", ",".join(r.get("trained_settings") or []))
        elif r.get("variant") not in (None, "equal-steps"):
            label = ("generalist", r.get("bn"), r["variant"])
        else:
            label = ("generalist", r.get("bn"))
        acc[(label, r["setting"])].append(r[metric])
    return acc


def _label_text(label: tuple) -> str:
    if label[0] == "pretrained":
        return "pretrained"
    if label[0] == "specialist":
        return f"specialist {label[1]} (bn {label[2]})"
    if label[0] == "bn-stats":
        return f"BN statistics of {label[1]}"
    return f"generalist (bn {label[1]})" + (f", {label[2]}" if len(label) > 2 else "")


def deployment_report(rows: list[dict], metric: str = "top1") -> str:
    """Fig. 5 style: one row per model (pretrained, each specialist, the generalists), one column
    per val setting (lossless first, then the paper's order), mean ± std over seeds; then the
    deployment targets, each met or missed by how much (means over seeds)."""
    from pipeline.setting import PAPER_SETTINGS

    acc = _deployment_cells(rows, metric)
    if not acc:
        raise UserError("no deployment rows (rows with a 'model' field: experiments/deployment.py --publish)")
    present = {s for _, s in acc}
    settings = [s for s in PAPER_SETTINGS if s in present] + sorted(present - set(PAPER_SETTINGS))
    rank = {"pretrained": 0, "specialist": 1, "generalist": 2, "bn-stats": 3}
    labels = sorted({lab for lab, _ in acc}, key=lambda lab: (rank[lab[0]], lab[-1] or "", settings.index(lab[1])
                                                             if lab[0] == "specialist" and lab[1] in settings else 0))
    bpp = {}
    for r in rows:
        if r.get("mean_bpp") is not None:
            bpp.setdefault(r["setting"], r["mean_bpp"])
    body = [["bits per pixel"] + [f"{bpp[s]:.3f}" if s in bpp else "—" for s in settings]]
    body += [[_label_text(lab)] + [_cell(acc.get((lab, s), [])) for s in settings] for lab in labels]
    seeds = max((len(v) for (lab, _), v in acc.items() if lab[0] != "pretrained"), default=1)
    text = (f"{metric} (%, mean ± sample std over {seeds} seed(s)); every model on every val setting:\n\n"
            + table(["model", *settings], body))

    mean = statistics.mean
    checks = []

    def check(target: int, model: tuple, setting: str, ref: tuple, ref_setting: str) -> None:
        got, want = acc.get((model, setting)), acc.get((ref, ref_setting))
        if not got or not want:
            return
        what, slack = DEPLOYMENT_TARGETS[target]
        diff = mean(got) - mean(want)
        verdict = "met" if diff >= -slack else f"missed by {-slack - diff:.2f}"
        checks.append([str(target + 1), _label_text(model), setting, f"{mean(got):.2f}",
                       f"{_label_text(ref)} {mean(want):.2f}", f"{diff:+.2f}", verdict])

    gens = [lab for lab in labels if lab[0] == "generalist"]
    specs = [lab for lab in labels if lab[0] == "specialist"]
    pre = ("pretrained",)
    for g in gens:
        for sp in specs:
            if sp[2] == g[1]:
                check(0, g, sp[1], sp, sp[1])
    for g in gens:
        check(1, g, "lossless", pre, "lossless")
    for sp in specs:
        if sp[2] == "frozen":
            check(2, sp, "lossless", pre, "lossless")
    if checks:
        legend = "; ".join(f"{i + 1}: {what}" for i, (what, _) in enumerate(DEPLOYMENT_TARGETS))
        text += (f"\n\nTargets ({legend}; means over seeds):\n\n"
                 + table(["target", "model", "on", metric, "reference", "difference", "verdict"], checks,
                         align="llrrlrl"))
    return text + f"\n\n({METRIC_NOTES[metric]})"


def deployment_reports(rows: list[dict]) -> str:
    """The deployment view on 1000-way top-1, then on top1_present when the rows have it: a model
    trained on a few classes gains 1000-way top-1 on clean images by learning which classes occur,
    which top1_present leaves out."""
    text = deployment_report(rows, "top1")
    if any(r.get("top1_present") is not None for r in rows if "model" in r):
        text += "\n\n" + deployment_report(rows, "top1_present")
    return text


def compare(labelled: list[tuple[str, list[dict]]], setting: str | None = None, metric: str = "top1") -> str:
    """The own-setting cells of several results files side by side: rows = (setting, label),
    with each file's bytes/img (a codec option changes it) and the pretrained model."""
    cells = [(label, *own_cells(rows, metric)) for label, rows in labelled]
    settings = sorted({s for _, acc, _ in cells for (s, k) in acc if setting is None or s == setting})
    if not settings:
        raise UserError(f"no rows on {setting or 'any setting'} in the compared results")
    keys = sorted({k for _, acc, _ in cells for (s, k) in acc if s in settings}, key=methods.rank)
    body = []
    for s in settings:
        for label, acc, info in cells:
            st = info.get(s, {})
            body.append([s, label, f"{st['bytes']:.0f}" if st.get("bytes") else None,
                         f"{st['psnr']:.2f}" if st.get("psnr") else None,
                         *(_cell(acc.get((s, k), [])) for k in keys),
                         _gain(acc.get((s, "expert"), []), acc.get((s, "finetune"), []))])
    header = ["setting", "shards", "bytes/img", "PSNR (dB)", *(methods.title(k) for k in keys), "expert − fine-tune"]
    return f"{metric} (%, mean ± sample std over seeds):\n\n" + table(header, body, "ll" + "r" * (len(keys) + 3))


def compare_report(labelled: list[tuple[str, list[dict]]], setting: str | None = None) -> str:
    text = compare(labelled, setting, "top1") + f"\n\n({METRIC_NOTES['top1']})"
    if any(r.get("top1_present") is not None for _, rows in labelled for r in rows):
        text += "\n\n" + compare(labelled, setting, "top1_present") + f"\n\n({METRIC_NOTES['top1_present']})"
    return text + _selected_note([r for _, rows in labelled for r in rows])


def load_rows(paths: list[Path], allow_selected: bool = False) -> list[dict]:
    """The rows of results files; rows scored on the images their checkpoint was chosen on are
    refused unless ``allow_selected`` (``trainer.reports.results.check_selection``)."""
    rows = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a readable results file ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) and "method" in r and "setting" in r
                                                 for r in data):
            raise UserError(f"{path}: expected a list of trainer.evaluation rows")
        rows += check_selection(data, allow_selected, str(path))
    return rows


def meta_path(results: Path) -> Path:
    """``X.json`` -> ``X.meta.json``: what the experiment script measured the rows with."""
    return results.with_name(results.stem + ".meta.json")


def budget_line(paths: list[Path]) -> str:
    """One line per results file that has a meta file beside it: the budget it was run with."""
    lines = []
    for path in paths:
        mp = meta_path(path)
        if not mp.exists():
            continue
        try:
            m = json.loads(mp.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{mp}: not a readable meta file ({exc})") from None
        steps = m.get("steps_per_run") or []
        loader = [v for v in (m.get("loader") or {}).values() if isinstance(v, dict)]
        feed = ""
        if loader:
            mean = statistics.mean
            feed = (f" The loader fed {mean(v['distinct_per_batch'] for v in loader):.2f} distinct classes per batch "
                    f"(an i.i.d. draw: {mean(v['iid'] for v in loader):.2f}) and "
                    f"{mean(v['classes_seen'] for v in loader):g} of {loader[0]['classes']} classes per epoch "
                    f"(mean over seeds).")
        lines.append(
            f"`{path.name}`: {m.get('arch')}, {len(m.get('seeds') or [])} seed(s); train subset "
            f"{m.get('train_per_class')} images per class ({m.get('order')} shards of {m.get('shard_size')}), "
            f"val subset {m.get('val_per_class')} per class; {m.get('epochs')} epoch(s)"
            + (f" of {m['train_limit']} samples" if m.get("train_limit") else "")
            + f", batch {m.get('batch')}, {'/'.join(map(str, steps)) or '?'} steps per run, lr {m.get('lr')}, "
            f"α {m.get('alpha')}; {m.get('device')} on {m.get('machine')}, loader workers {m.get('workers')}." + feed
            + _selection_text(m.get("selection")))
    return "\n".join(lines)


def _selection_text(selection) -> str:
    """How the scored checkpoints were chosen (meta files written before this was recorded: nothing)."""
    if isinstance(selection, dict):
        return (f" Checkpoints chosen (best epoch) on {selection.get('per_class')} train images per class outside "
                f"the train subset ({selection.get('split')}), never on the scored images.")
    if selection:
        return f" Checkpoints scored: the {selection} (no validation)."
    return ""


#: --view: name -> the report of a list of rows
VIEWS = {"table1": report, "retention": retention_report, "deployment": deployment_reports}


def generate(results: list[Path], compared: list[str] = (), setting: str | None = None, view: str = "auto",
             root: Path | None = None, allow_selected: bool = False) -> str:
    """The text of one summary (what the command prints and writes into a README block);
    relative paths are taken from ``root`` when given."""
    def at(p) -> Path:
        return Path(root) / p if root is not None and not Path(p).is_absolute() else Path(p)

    if compared:
        if results:
            raise UserError("give results files either as arguments or with --compare, not both")
        labelled, paths = [], []
        for item in compared:
            label, sep, path = item.partition("=")
            if not sep or not label or not path:
                raise UserError(f"--compare {item!r}: write LABEL=FILE")
            paths.append(at(path))
            labelled.append((label, load_rows([paths[-1]], allow_selected)))
        if len(labelled) < 2:
            raise UserError("--compare: give two results files or more")
        text = compare_report(labelled, setting)
    else:
        if not results:
            raise UserError("give one or more results files (or --compare LABEL=FILE ...)")
        paths = [at(p) for p in results]
        rows = load_rows(paths, allow_selected)
        if view == "auto":
            view = ("deployment" if any("model" in r for r in rows) else
                    "retention" if any(r.get("group") is not None for r in rows) else "table1")
        text = VIEWS[view](rows)
    budget = budget_line(paths)
    if budget:
        text += "\n\nBudget: " + budget.replace("\n", "\n\nBudget: ")
    return text


def block(argv: list[str], root: Path = ROOT) -> str:
    """A README block's content from its arguments (``docsgen/readme_block.py``)."""
    results, compared, setting, view, it = [], [], None, "auto", iter(argv)
    for arg in it:
        if arg == "--compare":
            compared.append(next(it))
        elif arg == "--setting":
            setting = next(it)
        elif arg == "--view":
            view = next(it)
        else:
            results.append(Path(arg))
    text = generate(results, compared, setting, view, root=root)
    return f"Generated by `experiments/summarize.py {' '.join(argv)}`.\n\n{text}"


def write_block(readme: Path, name: str, content: str) -> None:
    from pipeline.markdown import BlockError, replace_block
    try:
        atomic_write(readme, replace_block(readme.read_text(), name, content))
    except (BlockError, OSError) as exc:
        raise UserError(f"{readme}: {exc}") from None


def readme_blocks() -> dict:
    """The experiment blocks of RESULTS_PAGE (the registry of every generated block,
    docsgen/readme_block.py, lists them): name -> arguments."""
    return {b.name: list(b.args) for b in BLOCKS if b.file == RESULTS_PAGE and b.renderer == "summary"}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("results", nargs=-1, type=click.Path(path_type=Path))
@click.option("--compare", "compared", multiple=True, metavar="LABEL=FILE",
              help="Results files side by side (twice or more), e.g. mixed=a.json sorted=b.json.")
@click.option("--setting", default=None, help="Only this trained setting (--compare).")
@click.option("--view", type=click.Choice(["auto", *VIEWS]), default="auto", show_default=True,
              help="auto: deployment for experiments/deployment.py's rows, retention when the rows have class "
                   "groups, else table1.")
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the tables into this Markdown file's block.")
@click.option("--block", "block_name", default="imagenette", show_default=True,
              help="Block name: <!-- NAME:start --> ... <!-- NAME:end -->.")
@click.option("--all-blocks", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Regenerate every experiment block of this Markdown file ({RESULTS_PAGE}; "
                   "docsgen/readme_block.py) from the results files.")
@click.option("--only", multiple=True, metavar="NAME",
              help="With --all-blocks: only these blocks (repeatable).")
@click.option(ALLOW_SELECTED, "allow_selected", is_flag=True,
              help=f"Show rows whose checkpoint was chosen on the images it is scored on, marked {SELECTED_MARK} "
                   "(refused without it).")
def cli(results, compared, setting, view, readme, block_name, all_blocks, only, allow_selected):
    """Mean ± spread over seeds of trainer.evaluation results."""
    if all_blocks:
        blocks = readme_blocks()
        unknown = sorted(set(only) - set(blocks))
        if unknown:
            raise UserError(f"--only {', '.join(unknown)}: not an experiment block ({', '.join(blocks)})")
        for name, argv in blocks.items():
            if only and name not in only:
                continue
            write_block(all_blocks, name, block(argv))
            click.echo(f"{all_blocks}: block {name} regenerated")
        return 0
    text = generate(list(results), list(compared), setting, view, allow_selected=allow_selected)
    click.echo(text)
    if readme:
        source = " ".join(f"--compare {c}" for c in compared) if compared else " ".join(str(p) for p in results)
        write_block(readme, block_name, f"Generated by `experiments/summarize.py {source}`.\n\n{text}")
    return 0


def main(argv=None) -> int:
    return run_click(cli, argv, "experiments/summarize.py")


if __name__ == "__main__":
    sys.exit(main())
