"""A run folder: the one place that knows its file names, what a complete run is, and how it
is read back.  The trainer writes through it; the reports, the demo and the experiments
read through it.  No torch here: the reports import it.

Files: ``args.yaml`` (the resolved config; ``trainer.run --config`` repeats the run),
``args.json`` (the same plus what the run learnt from the shards: what marks a folder as a
run), ``metrics.jsonl`` + ``summary.csv`` (one row per epoch), ``last.pth`` (every epoch) and
``best.pth`` (the best epoch; the last one when none improved), ``tensorboard/`` on request.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_write, atomic_write_json, make_folder
from pipeline.bounded import BoundedReadError, loads_json, read_json
from pipeline.limits import FileKindError, read_regular

ARGS_YAML = "args.yaml"
ARGS_JSON = "args.json"
METRICS = "metrics.jsonl"
#: one row an epoch: far above any run's
METRICS_MAX_BYTES = 64 << 20
SUMMARY = "summary.csv"
BEST = "best.pth"
LAST = "last.pth"
TENSORBOARD = "tensorboard"


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def args_json(self) -> Path:
        return self.path / ARGS_JSON

    @property
    def args_yaml(self) -> Path:
        return self.path / ARGS_YAML

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    # -- reading --------------------------------------------------------------------------------
    def is_run(self) -> bool:
        """A folder the trainer started a run in (it wrote ``args.json``)."""
        return (self.path / ARGS_JSON).is_file()

    def args(self) -> dict:
        """``args.json`` ({} when absent or unreadable)."""
        try:
            data = read_json(self.path / ARGS_JSON, "run description")
        except (OSError, BoundedReadError):
            return {}
        return data if isinstance(data, dict) else {}

    def metrics(self) -> list[dict]:
        """The epoch rows of ``metrics.jsonl``, up to a half-written last line (a killed run)."""
        try:
            data = read_regular(self.path / METRICS, "metrics file", METRICS_MAX_BYTES)
        except FileKindError:
            raise       # a FIFO, a device or a folder in its place: one line, never a wait
        except OSError:
            return []
        text = data.decode("utf-8", "replace")
        rows = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = loads_json(line, str(self.path / METRICS))
            except BoundedReadError:
                break
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def complete(self, epochs: int) -> bool:
        """The run finished ``epochs`` epochs: both checkpoints written and a metrics row per epoch."""
        return self.best.is_file() and self.last.is_file() and len(self.metrics()) >= epochs

    @classmethod
    def find(cls, root: str | Path | None) -> list["RunDir"]:
        """The runs directly under ``root`` (folders with ``args.json``), by name."""
        if root is None or not Path(root).is_dir():
            return []
        return [cls(p.parent) for p in sorted(Path(root).glob(f"*/{ARGS_JSON}"))]

    # -- writing (the trainer's main process) ---------------------------------------------------
    def start(self, config: dict, args: dict, yaml_text: str, keep_before: int) -> list[dict]:
        """Record a run's configuration, and keep the metrics of the epochs before ``keep_before``
        (a resumed run); returns the rows kept."""
        make_folder(self.path, "run folder")
        atomic_write(self.args_yaml, yaml_text)
        atomic_write_json(self.path / ARGS_JSON, dict(sorted(args.items())))
        rows = [r for r in self.metrics() if r.get("epoch", 0) < keep_before]
        atomic_write(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
        if rows:
            atomic_write(self.path / SUMMARY, summary_csv(rows))
        return rows

    def add_epoch(self, row: dict, rows: list[dict]) -> None:
        """Append an epoch's row (``rows``: every row so far, ``row`` last) to the metrics."""
        fd = os.open(self.path / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a") as f:   # appended in place: never through a link planted since
            f.write(json.dumps(row) + "\n")
        atomic_write(self.path / SUMMARY, summary_csv(rows))

    def finish(self) -> None:
        """A run none of whose epochs improved still has a ``best.pth``: its last epoch."""
        if not self.best.exists() and self.last.exists():
            atomic_write(self.best, self.last.read_bytes(), fsync=True)


def summary_csv(rows: list[dict]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
