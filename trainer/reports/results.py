"""Load what the pipeline and the trainer wrote (manifests, eval results, run folders) into
plain rows that the report and the recommender share.

Inputs (contracts of the other modules):

- ``SHARDS/<split>/<setting>/manifest.json``: per-setting rate and quality (``mean`` bytes,
  bpp, PSNR, SSIM);
- ``results.json`` from ``trainer.evaluation``: a list of rows (one per model x evaluated setting;
  the columns are ``trainer.evaluation.COLUMNS``);
- ``runs/<name>/args.json`` from ``trainer.run``: which method / labels each run used.

A *model* is identified by (arch, method, labels, trained_on); ``trainer.vocab.key`` folds
the labels into the method so that an expert trained on teacher labels is reported as its own
method ("expert (teacher labels)") and never mixed with the dataset-labelled expert.

Rows of a class group (``trainer.evaluation --group``: ``group`` is set) score a subset of a
setting's classes; they never enter Table 1, the figures or the recommender, which read the
whole-setting rows only.  ``load_results(..., groups=True)`` returns them too, for the
retention view (``trainer.reports.report``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pipeline import codecs
from pipeline.bounded import BoundedReadError, read_json
from pipeline.manifest import METRIC_RANGES, Manifest, ManifestError
from pipeline.provenance import resolve_path
from pipeline.setting import Setting, SettingError
from trainer import vocab
from trainer.clitools import UserError
from trainer.rundir import RunDir

REQUIRED_RESULT_KEYS = ("arch", "method", "setting", "top1")


class ResultsError(UserError, ValueError):
    """A results / manifest file that cannot be used (the message names the file)."""


# --------------------------------------------------------------------------- selection

#: the results column (``trainer.evaluation``): the checkpoint was chosen on the images it scores
SELECTED = "selected_on_scored_data"
#: the option that lets such rows through, marked
ALLOW_SELECTED = "--allow-selected-on-scored"
SELECTED_MARK = "†"
SELECTED_NOTE = (f"{SELECTED_MARK} the checkpoint was chosen (best epoch) on the images it is scored on, or the "
                 f"row does not record what chose it ({ALLOW_SELECTED}): an optimistic or unchecked score.")


def _field(row, key: str, attr: str | None = None):
    return row.get(key) if isinstance(row, dict) else getattr(row, attr or key, None)


def _flag(row):
    return row.get(SELECTED) if isinstance(row, dict) else row.selected_on_scored


def selected_on_scored(row) -> bool:
    """True for a row (a results dict or a :class:`Result`) whose checkpoint was chosen on the
    images it scores."""
    return _flag(row) is True


def selection_unknown(row) -> bool:
    """A row that does not say what chose its checkpoint: the column is missing (an older results
    file) or null (a checkpoint that does not record it).  Refused like a flagged row."""
    return not isinstance(_flag(row), bool)


def not_cleared(row) -> bool:
    """A row the reports refuse unless allowed: flagged, or its selection unknown."""
    return _flag(row) is not False


def check_selection(rows: list, allow: bool = False, source: str = "") -> list:
    """The rule every summary and report applies: rows scored on the images their checkpoint
    was chosen on, and rows that do not say (``selected_on_scored_data`` missing or null), are
    refused (a one-line error naming the first of them) unless ``allow``; then they are kept,
    and :func:`mark` and ``SELECTED_NOTE`` show them.  Returns ``rows``."""
    refused = sorted((r for r in rows if not_cleared(r)), key=lambda r: not selected_on_scored(r))   # flagged first
    if refused and not allow:
        r = refused[0]
        model = _field(r, "checkpoint") or _field(r, "weights") or f"{_field(r, 'method')} model"
        more = f" (and {len(refused) - 1} other row(s))" if len(refused) > 1 else ""
        why = ("the checkpoint was chosen on the images it is scored on" if selected_on_scored(r)
               else "the row does not record what chose the checkpoint (unknown)")
        raise ResultsError(f"{source + ': ' if source else ''}{model} on {_field(r, 'setting')}: {why} "
                           f"({SELECTED}){more}; choose it on another split, or give {ALLOW_SELECTED} to show "
                           f"such rows marked {SELECTED_MARK}")
    return rows


def mark(rows: Iterable) -> str:
    """SELECTED_MARK when one of ``rows`` is flagged or of unknown selection."""
    return SELECTED_MARK if any(not_cleared(r) for r in rows) else ""


# --------------------------------------------------------------------------- settings

def codec_of(name: str) -> str:
    """The codec of a setting name; a name that is not one (a multi-setting model's
    "jpeg-10,jpeg-75") sorts as itself."""
    try:
        return Setting.parse(name).codec
    except SettingError:
        return name


def codec_rank(codec: str) -> tuple[float, str]:
    """Where tables and figures put a codec: its ``order`` in the codec registry (lossless, the
    reference, first), a name the registry does not know last."""
    try:
        return (codecs.get(codec).order, "")
    except codecs.CodecError:
        return (math.inf, codec)


def codec_title(codec: str) -> str:
    """A codec's display name ("JPEG 2000"), its name when the registry does not know it."""
    try:
        return codecs.get(codec).title
    except codecs.CodecError:
        return codec


def finite(x: Any) -> float | None:
    """JSON number or None; NaN / inf / missing become None (a blank cell)."""
    if x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError, OverflowError):     # 10**400 is an int JSON allows
        return None
    return value if math.isfinite(value) else None


#: the numbers of a result row and the values each can take (inclusive; a rate is positive):
#: a row outside them was not written by trainer.eval, and nothing is recommended from it
NUMBER_RANGES = {"top1": (0.0, 100.0), "top5": (0.0, 100.0), "top1_present": (0.0, 100.0), "count": (0, 2 ** 53),
                 **{f"mean_{m}": bounds for m, bounds in METRIC_RANGES.items()}}


def _number(path: Path, index: int, row: dict, key: str) -> float | None:
    """``row[key]`` as a number within :data:`NUMBER_RANGES` (None when absent or null), or a
    one-line ResultsError naming the file, the row, the field and what it may be."""
    value = row.get(key)
    if value is None:
        return None
    lo, hi = NUMBER_RANGES[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            ok = lo <= float(value) <= hi and (key != "count" or float(value) == int(value))
        except OverflowError:
            ok = False
    if not ok:
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:21] + "..."
        kind = "a whole number" if key == "count" else "a number"
        raise ResultsError(f"{path}: row {index}: {key} {shown} is not {kind} in [{lo:g}, {hi:g}]; "
                           "not a results file trainer.eval wrote")
    return float(value) if key != "count" else int(value)


# --------------------------------------------------------------------------- manifests

@dataclass(frozen=True)
class SettingStats:
    """Rate and quality of one setting on the evaluation split, read through its
    :class:`pipeline.manifest.Manifest` (the setting is the manifest's :class:`Setting`)."""
    manifest: Manifest
    source: str = ""

    @classmethod
    def from_manifest(cls, m: Manifest, source: str = "") -> "SettingStats":
        return cls(m, source)

    setting = property(lambda self: self.manifest.name)
    codec = property(lambda self: self.manifest.codec)
    q = property(lambda self: self.manifest.q)
    count = property(lambda self: self.manifest.get("count"))
    bytes = property(lambda self: self.manifest.mean("bytes"))
    bpp = property(lambda self: self.manifest.mean("bpp"))
    psnr = property(lambda self: self.manifest.mean("psnr"))
    ssim = property(lambda self: self.manifest.mean("ssim"))


def load_manifests(shards: str | Path | None, split: str = "val") -> dict[str, SettingStats]:
    """``shards/<split>/*/manifest.json`` -> {setting: stats}.  Missing folder -> {}."""
    if shards is None:
        return {}
    base = Path(shards) / split
    out: dict[str, SettingStats] = {}
    for path in sorted(base.glob("*/manifest.json")):
        stats = _manifest_stats(path)
        out[stats.setting] = stats
    return out


def _manifest_stats(path: Path) -> SettingStats:
    try:
        m = Manifest.load(path)
    except ManifestError as exc:
        raise ResultsError(str(exc)) from None
    return SettingStats.from_manifest(m, str(path))


# --------------------------------------------------------------------------- results

@dataclass
class Result:
    """One evaluation: a model (arch, method, labels, trained_on) on one setting."""
    arch: str
    method: str
    labels: str
    trained_on: str | None
    setting: str
    codec: str
    q: float | int | None
    top1: float
    top5: float | None = None
    count: int | None = None
    bytes: float | None = None
    bpp: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    split: str | None = None
    checkpoint: str | None = None
    weights: str | None = None
    top1_present: float | None = None
    group: str | None = None       # a class group's name (None: the whole setting)
    selected_on_scored: bool | None = None   # SELECTED (None: not recorded)
    extra: dict = field(default_factory=dict)

    @property
    def mkey(self) -> str:
        return vocab.key(self.method, self.labels)

    @property
    def model_key(self) -> tuple:
        return (self.arch, self.mkey, self.trained_on)

    @property
    def matched(self) -> bool:
        """True for the paper's Table 1 cells: a model evaluated on the setting it was trained
        on, or the pretrained model on any setting."""
        return self.method == "pretrained" or self.trained_on == self.setting


def load_results(paths: str | Path | Iterable[str | Path] | None, groups: bool = False) -> list[Result]:
    """Rows of one or more results.json files (a missing file is an error, an empty list not).

    Rows whose top-1 is null are left out: trainer.evaluation writes null when the evaluated images
    carry no labels, which is a measurement of nothing.  Rows of class groups are left out
    unless ``groups`` (they score part of a setting, not the setting)."""
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[Result] = []
    for path in paths:
        rows.extend(_results_file(Path(path)))
    return rows if groups else [r for r in rows if r.group is None]


def results_from_rows(rows: list[dict], source: str = "rows") -> list[Result]:
    """Result rows from already-parsed trainer.evaluation rows (null top-1 left out, as on load)."""
    out = [_result_row(Path(source), i, row) for i, row in enumerate(rows)]
    return [r for r in out if r is not None]


def _results_file(path: Path) -> list[Result]:
    try:
        data = read_json(path, "results file")
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file (write it with python -m trainer.evaluation)") from None
    except (OSError, BoundedReadError) as exc:
        raise ResultsError(f"{exc} (not a readable results file)") from None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        data = data["results"]  # tolerate a wrapped list
    if not isinstance(data, list):
        raise ResultsError(f"{path}: expected a JSON list of result rows, got {type(data).__name__}")
    rows = [_result_row(path, i, row) for i, row in enumerate(data)]
    return [r for r in rows if r is not None]


def _result_row(path: Path, index: int, row: dict) -> Result | None:
    if not isinstance(row, dict):
        raise ResultsError(f"{path}: row {index} is not an object")
    if "top1" in row and row["top1"] is None:
        return None
    numbers = {key: _number(path, index, row, key) for key in NUMBER_RANGES}
    missing = [k for k in REQUIRED_RESULT_KEYS if row.get(k) is None]
    if missing:
        raise ResultsError(f"{path}: row {index} lacks {', '.join(missing)}")
    try:
        setting = Setting.parse(str(row["setting"]))
    except SettingError as exc:
        raise ResultsError(f"{path}: row {index}: {exc}") from None
    codec, q = setting.codec, setting.q
    known = {"arch", "method", "labels", "trained_on", "setting", "codec", "q", "top1", "top5",
             "count", "mean_bytes", "mean_bpp", "mean_psnr", "mean_ssim", "split", "checkpoint", "weights",
             "top1_present", "group", SELECTED}
    group = row.get("group")
    if group is not None and not isinstance(group, str):
        raise ResultsError(f"{path}: row {index}: group {group!r} is not a name")
    return Result(
        arch=str(row["arch"]), method=str(row["method"]), labels=str(row.get("labels") or "dataset"),
        trained_on=row.get("trained_on"), setting=setting.name, codec=codec, q=q,
        top1=numbers["top1"], top5=numbers["top5"], count=numbers["count"],
        bytes=numbers["mean_bytes"], bpp=numbers["mean_bpp"],
        psnr=numbers["mean_psnr"], ssim=numbers["mean_ssim"], split=row.get("split"),
        checkpoint=resolve_path(row.get("checkpoint"), path.parent), weights=row.get("weights"),
        top1_present=numbers["top1_present"], group=group or None,
        selected_on_scored=row.get(SELECTED) if isinstance(row.get(SELECTED), bool) else None,
        extra={k: v for k, v in row.items() if k not in known})


def best_per_cell(results: Iterable[Result]) -> tuple[dict[tuple, Result], dict[tuple, int]]:
    """One result per (arch, method key, trained_on, setting): the highest top-1.

    Several runs of one configuration (e.g. the paper's "best of three learning rates") give
    several rows; the report shows the best and says how many there were (second dict)."""
    best: dict[tuple, Result] = {}
    counts: dict[tuple, int] = {}
    for r in results:
        key = (*r.model_key, r.setting)
        counts[key] = counts.get(key, 0) + 1
        if key not in best or r.top1 > best[key].top1:
            best[key] = r
    return best, counts


# --------------------------------------------------------------------------- runs

@dataclass
class Run:
    name: str
    path: Path
    method: str | None
    arch: str | None
    labels: str | None
    trained_on: str | None
    args: dict
    has_best: bool

    @property
    def best(self) -> Path:
        return RunDir(self.path).best


def load_runs(runs: str | Path | None) -> list[Run]:
    """The runs under ``runs`` (:meth:`trainer.rundir.RunDir.find`)."""
    out = []
    for rd in RunDir.find(runs):
        args = rd.args()
        out.append(Run(name=rd.name, path=rd.path, method=args.get("method"), arch=args.get("arch"),
                       labels=args.get("labels"), trained_on=args.get("trained_on"), args=args,
                       has_best=rd.best.exists()))
    return out


def unevaluated_runs(runs: list[Run], results: list[Result]) -> list[Run]:
    """Runs none of whose checkpoints appears in the results (they need trainer.evaluation)."""
    seen = {Path(r.checkpoint).resolve().parent for r in results if r.checkpoint}
    return [run for run in runs if run.path.resolve() not in seen]


# --------------------------------------------------------------------------- joins

def setting_order(settings: Iterable[str], stats: dict[str, SettingStats],
                  results: Iterable[Result] = ()) -> list[str]:
    """Settings ordered by codec, then by decreasing bytes (highest quality first, as in the
    paper's Table 1); settings with no known rate go last within their codec, by name."""
    rate = {s: st.bytes for s, st in stats.items()}
    for r in results:
        rate.setdefault(r.setting, r.bytes)
        if rate[r.setting] is None:
            rate[r.setting] = r.bytes

    def key(s: str):
        b = rate.get(s)
        return (codec_rank(stats[s].codec if s in stats else codec_of(s)), b is None, -(b or 0), s)

    return sorted(set(settings), key=key)


def rate_of(r: Result, stats: dict[str, SettingStats], x: str = "bytes") -> float | None:
    """Bytes (or bpp) per image of a result: what eval recorded, else the manifest's mean."""
    return _own_or_manifest(r, stats, x)


def quality_of(r: Result, stats: dict[str, SettingStats], what: str) -> float | None:
    """PSNR or SSIM of a result's setting: the manifest's mean, else what eval recorded."""
    st = stats.get(r.setting)
    value = getattr(st, what) if st is not None else None
    return value if value is not None else getattr(r, what)


def _own_or_manifest(r: Result, stats: dict[str, SettingStats], attr: str) -> float | None:
    own = getattr(r, attr)
    if own is not None:
        return own
    st = stats.get(r.setting)
    return None if st is None else getattr(st, attr)


def single_split(results: list[Result], split: str) -> tuple[list[Result], list[str]]:
    """Results of one split only when several were evaluated (a cell must not mix splits);
    returns (kept rows, the other splits that were dropped)."""
    splits = {r.split for r in results if r.split}
    if len(splits) <= 1:
        return results, []
    return [r for r in results if r.split in (None, split)], sorted(splits - {split})


def eval_value(results: list[Result], setting: str, attr: str) -> float | None:
    """Rate or quality recorded by trainer.evaluation when the setting has no manifest."""
    return next((getattr(r, attr) for r in results if r.setting == setting and getattr(r, attr) is not None), None)


def difference(a: float | None, b: float | None) -> float | None:
    # rounded: top-1 values have 2 decimals at most, and 0.12000000000000455 helps nobody
    return None if a is None or b is None else round(a - b, 6)
