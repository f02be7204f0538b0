"""The retention view: what a model trained on some classes keeps of the others.

It reads the rows of class groups (``trainer.evaluation --group A=... --group B=...``): for every
(arch, trained setting, method) the top-1 of each group on the setting the model was trained
on ("own setting") and on every other evaluated setting (lossless: the clean images), beside
the pretrained model on the same sets.  Several runs of one cell (seeds) give mean ± sample
std and their count.  Models trained with ``--bn frozen`` (a row's ``bn``, written by
``experiments/retention.py``) are rows of their own beside the ``--bn train`` ones.  ``trainer.reports.report`` shows it beside Table 1 when group rows exist;
``experiments/summarize.py`` writes the tables of docs/results.md from the same function.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from pipeline.markdown import table as md_table
from trainer import vocab

from .results import Result, setting_order

OWN = "own setting"   # the column of the setting each model was trained on


@dataclass
class Cell:
    values: list[float]

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, digits: int = 2) -> str:
        if not self.values:
            return "—"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")


@dataclass
class RetentionRow:
    trained_on: str
    method: str                                   # method key (pretrained, finetune, expert+teacher ...)
    bn: str = "train"                             # the --bn mode it trained with
    cells: dict[tuple[str, str], dict[str, Cell]] = field(default_factory=dict)   # (group, where) -> metric -> Cell

    @property
    def title(self) -> str:
        return vocab.title(self.method) + ("" if self.bn == "train" else f" (--bn {self.bn})")

    def cell(self, group: str, where: str, metric: str) -> Cell:
        return self.cells.get((group, where), {}).get(metric, Cell([]))


@dataclass
class RetentionTable:
    arch: str
    groups: list[str]
    where: list[str]          # OWN, then the other evaluated settings (lossless first)
    rows: list[RetentionRow]

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(g, w) for w in self.where for g in self.groups]


METRICS = ("top1", "top1_present")


def retention_tables(results: list[Result]) -> list[RetentionTable]:
    """One table per architecture from the group rows of ``results`` (empty: no group rows).
    Trained models are placed under the setting they were trained on; the pretrained model
    is repeated under every trained setting, scored on the same sets."""
    rows = [r for r in results if r.group is not None]
    out = []
    for arch in sorted({r.arch for r in rows}):
        mine = [r for r in rows if r.arch == arch]
        trained = setting_order({r.trained_on for r in mine if r.trained_on}, {}, mine)
        if not trained:   # only the pretrained model: one block, its settings as columns
            trained = [None]
        groups = sorted({r.group for r in mine})
        others = setting_order({r.setting for r in mine} - ({*trained} if trained != [None] else set()), {}, mine)
        where = ([OWN] if trained != [None] else []) + others
        table_rows = []
        for t in trained:
            keys = [("pretrained", "train")] + sorted({(r.mkey, bn_of(r)) for r in mine if r.trained_on == t
                                                       and t is not None}, key=lambda k: (vocab.rank(k[0]), k[1] != "train"))
            for mkey, bn in keys:
                row = RetentionRow(t or "—", mkey, bn)
                for r in mine:
                    if r.mkey != mkey or (mkey != "pretrained" and (r.trained_on != t or bn_of(r) != bn)):
                        continue
                    w = OWN if r.setting == t else r.setting
                    if w not in where:
                        continue
                    for metric in METRICS:
                        value = r.top1 if metric == "top1" else r.top1_present
                        if value is not None:
                            row.cells.setdefault((r.group, w), {}).setdefault(metric, Cell([])).values.append(value)
                if row.cells:
                    table_rows.append(row)
        where = [w for w in where if any((g, w) in r.cells for r in table_rows for g in groups)]
        out.append(RetentionTable(arch, groups, where, table_rows))
    return out


def bn_of(r: Result) -> str:
    """A result's --bn mode (``train`` when the row does not say: every run before the option)."""
    return "frozen" if r.extra.get("bn") == "frozen" else "train"


def column_title(group: str, where: str) -> str:
    return f"{group} ({where})"


def markdown(t: RetentionTable, metric: str = "top1", digits: int = 2) -> str:
    header = ["trained on", "method", *(column_title(g, w) for g, w in t.columns)]
    body = [[r.trained_on, r.title, *(r.cell(g, w, metric).text(digits) for g, w in t.columns)]
            for r in t.rows]
    return md_table(header, body, "ll" + "r" * len(t.columns))


def csv_rows(tables: list[RetentionTable]) -> list[dict]:
    out = []
    for t in tables:
        for r in t.rows:
            for g, w in t.columns:
                c1, cp = r.cell(g, w, "top1"), r.cell(g, w, "top1_present")
                if not c1.values and not cp.values:
                    continue
                out.append({"arch": t.arch, "trained_on": r.trained_on, "method": r.title,
                            "group": g, "evaluated_on": r.trained_on if w == OWN else w,
                            "top1_mean": c1.mean, "top1_std": c1.std, "top1_present_mean": cp.mean,
                            "top1_present_std": cp.std, "n": len(c1.values)})
    return out


CSV_HEADER = ["arch", "trained_on", "method", "group", "evaluated_on", "top1_mean", "top1_std",
              "top1_present_mean", "top1_present_std", "n"]


def section(t: RetentionTable) -> str:
    """The Markdown of one architecture's retention view (both metrics)."""
    return (f"## Retention — {t.arch}\n\n"
            "Top-1 in % of each class group, mean ± sample std over the runs of a cell; "
            f"\"{OWN}\" = the compressed setting the model was trained on (for pretrained: the setting of "
            "the block), lossless = the clean images.\n\n"
            "1000-way top-1 (arg-max over all outputs):\n\n" + markdown(t, "top1") + "\n\n"
            "top1_present (arg-max over the group's own classes):\n\n" + markdown(t, "top1_present") + "\n")
