"""The calibrated routing table: which model answers each codec and rate bin, chosen by its
top-1 on a calibration split.  This module owns the file (``routing.json``): it builds the
bins, picks each cell's model from calibration scores, writes the file, reads it back
(untrusted: every field checked) and routes a bitstream with it.

Bins, per codec of the calibration images:

- a codec without a quality value (``lossless``) is one cell;
- otherwise the rates (bits per pixel) the zoo's specialists of that codec were trained at
  split the axis at the geometric means between consecutive rates; one more edge, at the
  geometric mean of the highest trained rate and the lowest calibration setting above it,
  opens the cell ``above every expert`` (e.g. jpeg-75 beside a jpeg-10 specialist);
- a codec no specialist was trained on is one cell.

Each cell's model: the best calibration top-1 among the experts and the default over the
calibration images whose *bitstream rate* falls in the cell (routing reads the rate from the
bitstream, so calibration does too); ties go to the default, then to the cheaper model (fewer
bytes of its own), then by name.  A cell without calibration images says so and is answered
by the fixed rule (:mod:`receiver.route`), as is a codec the table does not know.

The table records each model's checkpoint digest and the calibration images' identities: the
clean crop's ``crop_sha256`` where the shards record it and the digest of every calibration
bitstream (compared by :func:`check_disjoint`, so that a table made on the images being scored
is refused) and their sample keys (the crop's source path within the
calibration source, for a reader that knows the sources).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.codecs import CodecError, Probe, get
from trainer.clitools import UserError

from .route import DEFAULT, Route, RouteError, Router

FORMAT = "m2m-routing-table"
VERSION = 1
MAX_TABLE_BYTES = 32 << 20
LOSSLESS_CELL, ABOVE, RATE, ALL = "lossless", "above every expert", "rate", "all rates"
KINDS = (LOSSLESS_CELL, ABOVE, RATE, ALL)


class TableError(RouteError, UserError):
    """A routing table that cannot be used (one line naming the file and the reason)."""


@dataclass(frozen=True)
class Cell:
    codec: str
    lo: float                  # bits per pixel, inclusive
    hi: float                  # exclusive; math.inf: unbounded
    kind: str
    model: str | None          # None: no calibration image fell here; the fixed rule answers
    images: int = 0

    @property
    def name(self) -> str:
        if self.kind in (LOSSLESS_CELL, ALL):
            return f"{self.codec}, {self.kind}"
        hi = "inf" if math.isinf(self.hi) else f"{self.hi:.3g}"
        head = f"{self.codec} [{self.lo:.3g}, {hi}) bpp"
        return f"{head}, {ABOVE}" if self.kind == ABOVE else head

    def holds(self, bpp: float) -> bool:
        return self.lo <= bpp < self.hi


def bins(codec: str, trained: list[float], calibration: list[float]) -> list[tuple[float, float, str]]:
    """(lo, hi, kind) of a codec's cells, from its specialists' ``trained`` rates and the mean
    rates of its calibration settings."""
    if get(codec).q_range is None:
        return [(0.0, math.inf, LOSSLESS_CELL if codec == "lossless" else ALL)]
    rates = sorted(set(trained))
    if not rates:
        return [(0.0, math.inf, ALL)]
    edges = [math.sqrt(a * b) for a, b in zip(rates, rates[1:])]
    above = sorted(r for r in calibration if r > rates[-1])
    out = [(lo, hi, RATE) for lo, hi in zip([0.0, *edges], [*edges, math.inf])]
    if above:
        edge = math.sqrt(rates[-1] * above[0])
        out[-1] = (out[-1][0], edge, RATE)
        out.append((edge, math.inf, ABOVE))
    return out


def choose(scores: dict[str, tuple[int, int]], cost: dict[str, int]) -> str | None:
    """The model of a cell from {model: (right, total)}: best top-1; ties to the default, then
    the cheaper, then by name.  None when the cell saw no image."""
    seen = {m: rt for m, rt in scores.items() if rt[1] > 0}
    if not seen:
        return None
    return min(seen, key=lambda m: (-seen[m][0] / seen[m][1], m != DEFAULT, cost.get(m, 0), m))


def file_digest(path: str | os.PathLike) -> str:
    from pipeline.shards import file_sha256
    return file_sha256(Path(path))


# --------------------------------------------------------------------------- the file

def build(cells: list[Cell], scores: dict[str, dict[str, tuple[int, int]]], models: dict[str, dict],
          calibration: dict, metric: str = "top1") -> dict:
    """The table as written: ``scores``: {cell name: {model: (right, total)}}; ``models``:
    {name: {"source", "sha256", "cost"}}; ``calibration``: source, label space, image identities;
    ``metric``: what the cells' scores (``top1``) count (``receiver.calibrate.METRICS``)."""
    return {"format": FORMAT, "version": VERSION, "metric": metric, "models": models,
            "calibration": calibration,
            "cells": [{"cell": c.name, "codec": c.codec, "lo": c.lo, "hi": None if math.isinf(c.hi) else c.hi,
                       "kind": c.kind, "model": c.model, "images": c.images,
                       "top1": {m: rt[0] / rt[1] for m, rt in sorted(scores.get(c.name, {}).items()) if rt[1]}}
                      for c in cells]}


def write(path: str | os.PathLike, table: dict) -> Path:
    from pipeline.atomic import atomic_write
    atomic_write(path, json.dumps(table, indent=1, sort_keys=False) + "\n")
    return Path(path)


def read(path: str | os.PathLike) -> dict:
    """The table of a file, its structure checked (not yet against a zoo: :class:`TableRouter`)."""
    from pipeline.bounded import BoundedReadError, read_json
    try:
        data = read_json(path, "routing table", max_bytes=MAX_TABLE_BYTES)
    except BoundedReadError as exc:
        raise TableError(str(exc)) from None
    return parse(data, str(path))


def parse(data, where: str) -> dict:
    """A table's structure checked (cells of registered codecs, bins that do not overlap, models
    the table lists); the cells by codec in ``_cells``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TableError(f"{where}: not a routing table (no \"format\": \"{FORMAT}\"); make one with receiver.calibrate")
    if data.get("version") != VERSION:
        raise TableError(f"{where}: routing table version {data.get('version')!r}; this receiver reads {VERSION}")
    for key, kind in (("models", dict), ("calibration", dict), ("cells", list)):
        if not isinstance(data.get(key), kind):
            raise TableError(f"{where}: {key} must be a {kind.__name__}")
    cells = [_cell(c, f"{where}: cell {i}") for i, c in enumerate(data["cells"], 1)]
    by_codec: dict[str, list[Cell]] = {}
    for c in cells:
        if c.model is not None and c.model not in data["models"]:
            raise TableError(f"{where}: cell {c.name!r} names model {c.model!r}, which the table's models do not list")
        by_codec.setdefault(c.codec, []).append(c)
    for codec, cs in by_codec.items():
        cs.sort(key=lambda c: c.lo)
        for a, b in zip(cs, cs[1:]):
            if b.lo < a.hi:
                raise TableError(f"{where}: cells {a.name!r} and {b.name!r} overlap")
    return {**data, "_cells": by_codec}


def _cell(c, where: str) -> Cell:
    if not isinstance(c, dict):
        raise TableError(f"{where}: expected an object")
    codec = c.get("codec")
    try:
        get(codec)
    except CodecError as exc:
        raise TableError(f"{where}: {exc}") from None
    lo, hi = c.get("lo"), c.get("hi")
    if not _finite(lo) or lo < 0 or not (hi is None or _finite(hi)):
        raise TableError(f"{where}: lo must be a finite rate >= 0 and hi a finite rate or null")
    hi = math.inf if hi is None else float(hi)
    if not lo < hi:
        raise TableError(f"{where}: an empty bin [{lo}, {hi})")
    if c.get("kind") not in KINDS:
        raise TableError(f"{where}: kind must be one of {', '.join(KINDS)}")
    model = c.get("model")
    if model is not None and not isinstance(model, str):
        raise TableError(f"{where}: model must be a name or null")
    images = c.get("images", 0)
    return Cell(codec, float(lo), hi, c["kind"], model, images if isinstance(images, int) else 0)


def _finite(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


# --------------------------------------------------------------------------- routing with it

class TableRouter:
    """Routes by the table's cell of the bitstream's codec and rate; the fixed rule where the
    table has no cell or a cell without calibration images."""

    def __init__(self, table: dict, fallback: Router, where: str):
        self.table, self.fallback, self.where = table, fallback, where
        self.cells: dict[str, list[Cell]] = table["_cells"]

    def route(self, probe: Probe) -> Route:
        for cell in self.cells.get(probe.codec, ()):
            if cell.holds(probe.bpp):
                if cell.model is None:
                    fixed = self.fallback.route(probe)
                    return Route(fixed.expert, f"table cell {cell.name} (no calibration image): {fixed.reason}",
                                 fixed.setting, cell.name)
                return Route(cell.model, f"table cell {cell.name}: best calibration top-1", None, cell.name)
        fixed = self.fallback.route(probe)
        return Route(fixed.expert, f"not in the routing table: {fixed.reason}", fixed.setting, None)


def check_zoo(table: dict, where: str, experts: dict, default, label_space_of) -> None:
    """Refuse a table that names a model the zoo lacks, a checkpoint that changed since
    calibration, or a calibration of another label space than the zoo's models."""
    for name, info in table["models"].items():
        if name == DEFAULT:
            if default is None:
                raise TableError(f"{where}: the table routes to the default model, and none is given (--default)")
            model = default
        elif name not in experts:
            raise TableError(f"{where}: model {name!r} is not in the zoo (experts: {', '.join(experts) or 'none'})")
        else:
            model = experts[name]
        digest = info.get("sha256") if isinstance(info, dict) else None
        if isinstance(digest, str) and os.path.isfile(model.path) and file_digest(model.path) != digest:
            raise TableError(f"{where}: {model.path} is not the checkpoint {name!r} was calibrated with "
                             "(its digest differs): calibrate again")
        space = table["calibration"].get("label_space")
        mine = label_space_of(model)
        if isinstance(space, str) and mine is not None and mine != space:
            raise TableError(f"{where}: calibrated on label space {space}, but {name!r} has {mine}")


def check_disjoint(table: dict, scored: dict, where: str = "routing table") -> None:
    """The selection guard (:mod:`trainer.selection`, the one the results use): a table calibrated
    on any image being scored is refused.  Images are compared by content: the clean crop's
    identity where both sides' shards record it (one photo's crop under any codec setting), and
    always the digest of each bitstream (one crop encoded by one setting gives the same bytes);
    never by sample key, which names a file within its split folder only."""
    from trainer import selection

    cal = table.get("calibration")
    cal = cal if isinstance(cal, dict) else {}

    def ids(d: dict, field: str) -> set[str]:
        v = d.get(field)
        return {x for x in v if isinstance(x, str)} if isinstance(v, (list, tuple, set)) else set()

    crops, scored_crops = ids(cal, "crop_sha256"), ids(scored, "crop_sha256")
    if crops and scored_crops:
        selection.check_disjoint(crops, scored_crops, where)
    common = selection.shared(ids(cal, "content_sha256"), ids(scored, "content_sha256"))
    if common:
        raise TableError(f"{where}: calibrated on {len(common)} of the images being scored "
                         f"(bitstream digest {sorted(common)[0]}): calibrate on a split disjoint from them")
