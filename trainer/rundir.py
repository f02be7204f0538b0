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
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_write, atomic_write_json

ARGS_YAML = "args.yaml"
ARGS_JSON = "args.json"
METRICS = "metrics.jsonl"
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
            data = json.loads((self.path / ARGS_JSON).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def metrics(self) -> list[dict]:
        """The epoch rows of ``metrics.jsonl``, up to a half-written last line (a killed run)."""
        try:
            text = (self.path / METRICS).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return []
        rows = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
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
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.args_yaml, yaml_text)
        atomic_write_json(self.path / ARGS_JSON, dict(sorted(args.items())))
        rows = [r for r in self.metrics() if r.get("epoch", 0) < keep_before]
        atomic_write(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
        if rows:
            atomic_write(self.path / SUMMARY, summary_csv(rows))
        return rows

    def add_epoch(self, row: dict, rows: list[dict]) -> None:
        """Append an epoch's row (``rows``: every row so far, ``row`` last) to the metrics."""
        with open(self.path / METRICS, "a") as f:
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
