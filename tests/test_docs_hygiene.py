"""The committed docs and results files are portable and speak of the software alone.

- No absolute path of a machine (``/work``, ``/tmp/``, ``/root``, ``/home/<user>``, ``C:\\``,
  ``~/``) in experiments/results, benchmarks/, docs/ or README.md, and no JSON string that is
  an absolute path: results files store paths relative to themselves, or run names
  (``pipeline.provenance.portable_path``).
- README.md and docs/ say what the software does and what was measured on which hardware,
  never how the work was organised: no tracker numbers, no borrowed machines, no allowance of
  machine time (``MAKING_OF`` below).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.provenance import portable_path, resolve_path  # noqa: E402

#: where the rules hold
SCANNED = ("experiments/results", "benchmarks", "docs", "README.md")
TEXT = {".json", ".md", ".py", ".csv", ".txt", ".yaml", ".yml", ".sh"}

#: an absolute path of some machine, anywhere in a text
ABSOLUTE = re.compile(r"""(?<![\w.~-])(/work\b|/tmp/|/root\b|/home/[\w.-]+|/Users/[\w.-]+|[A-Za-z]:\\|~/)""")
#: a JSON string value that is itself an absolute path ("/x/y", not "/" alone or a fraction like "1/2")
JSON_PATH = re.compile(r"^/[\w.-]+(/[\w.@+-]+)*/?$")

#: the rule: docs describe the software and its measurements, not the making of the project;
#: each pattern is one way the making of it creeps in (case-insensitive)
MAKING_OF = {
    "a tracker number": r"\b(issue|ticket|pr)\s*#?\d+",
    "the tracker's wishes": r"\bthe issue (asks|wants|says)",
    "a borrowed machine": r"\blent\b|\bborrowed (gpu|machine)",
    "an allowance of machine time": r"\bdevice[- ](time|minutes?)\b",
    "what travels to a machine": r"\bMiB that travel\b|\bthat travel to\b",
    "a session's limits": r"\bsession'?s? (time|limit|minutes)",
    "a withdrawn table": r"\bwithdrawn table\b",
}


def scanned_files(root: Path = ROOT) -> list[Path]:
    out = []
    for rel in SCANNED:
        p = root / rel
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT and "__pycache__" not in f.parts)
    return out


def absolute_paths(path: Path) -> list[str]:
    """What in ``path`` names a folder of a machine (line: text)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = [f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in ABSOLUTE.finditer(text)]
    if path.suffix == ".json":
        def walk(x):
            if isinstance(x, dict):
                for v in x.values():
                    yield from walk(v)
            elif isinstance(x, list):
                for v in x:
                    yield from walk(v)
            elif isinstance(x, str) and JSON_PATH.match(x):
                yield x
        found += [f"{path.name}: JSON value {v!r}" for v in walk(json.loads(text))]
    return found


def making_of(text: str) -> list[str]:
    return [f"{what}: {m.group(0)!r}" for what, pattern in MAKING_OF.items()
            for m in re.finditer(pattern, text, re.I)]


def test_no_absolute_path_in_results_docs_or_benchmarks():
    files = scanned_files()
    assert any(f.name == "retention-cpu.json" for f in files) and ROOT / "README.md" in files
    bad = [line for f in files for line in absolute_paths(f)]
    assert bad == [], "absolute paths in committed files (store them relative to the file, or by name)"


def test_docs_speak_of_the_software_alone():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    bad = [f"{d.relative_to(ROOT)}: {hit}" for d in docs for hit in making_of(d.read_text(encoding="utf-8"))]
    assert bad == []


@pytest.mark.parametrize("text, hits", [
    ("`shards_dir`: \"/work/main/runs/x\"", 1), ("C:\\Users\\me\\w.pth", 1), ("see /home/alice/data", 1),
    ("in /tmp/exp/runs", 1), ("~/weights.pth", 1),
    ("../shared/weights/x.pth", 0), ("runs/expert-j2k-200-s0/best.pth", 0), ("a 224/256 resize", 0),
    ("docs/work/notes", 0), ("and/or", 0),
])
def test_the_path_rule_can_fail(tmp_path, text, hits):
    f = tmp_path / "x.md"
    f.write_text(text)
    assert len(absolute_paths(f)) == hits


def test_the_json_rule_finds_a_path_value(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps([{"checkpoint": "/srv/runs/a/best.pth", "note": "1/2", "w": "runs/a/best.pth"}]))
    assert absolute_paths(f) == ["r.json: JSON value '/srv/runs/a/best.pth'"]


@pytest.mark.parametrize("text, hits", [
    # the phrases are split so that this file does not itself read as an account of the making
    ("as issue" + " 17 showed", 1), ("on a le" + "nt H200", 1), ("the dev" + "ice time allowed", 1),
    ("the 64 MiB that travel to it", 1), ("the 15 device-minutes", 1), ("the withdrawn table", 1),
    ("the session's time limit stopped it", 1),
    ("on an NVIDIA H200, 16 CPU cores", 0), ("a 2-core x86-64 CPU", 0), ("silently", 0),
    ("at most `--max-bytes` (64 MiB) each", 0), ("the length of the issue", 0),
])
def test_the_making_of_rule_can_fail(text, hits):
    assert len(making_of(text)) == hits


def test_portable_path(tmp_path):
    results = tmp_path / "exp" / "results.json"
    ck = tmp_path / "exp" / "runs" / "a" / "best.pth"
    assert portable_path(ck, results.parent) == "runs/a/best.pth"
    assert portable_path(tmp_path / "shards" / "val" / "jpeg-10", results.parent) == "../shards/val/jpeg-10"
    assert resolve_path("runs/a/best.pth", results.parent) == str(ck)
    # only the root in common: the name alone, never a climb to the root
    assert portable_path("/srv-elsewhere/w.pth", results.parent) == "w.pth"
    assert portable_path("DEFAULT", results.parent) == "DEFAULT" and portable_path(None, results.parent) is None
    assert resolve_path("/old/absolute/best.pth", results.parent) == "/old/absolute/best.pth"


#: a results file is written by the command that measured it; one copied from printed output says so
TRANSCRIBED = re.compile(r"transcri(bed|ption)|copied from (the )?(markdown|output)|typed in", re.I)


def transcribed(path: Path) -> list[str]:
    """The lines of a results file that say its numbers were copied rather than written by its run."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in TRANSCRIBED.finditer(text)]


def test_no_results_file_was_transcribed():
    files = [f for f in scanned_files() if f.suffix in (".json", ".md")]
    assert any(f.parent.name == "results" and f.parent.parent.name == "benchmarks" for f in files)
    assert [hit for f in files for hit in transcribed(f)] == []


@pytest.mark.parametrize("text, hits", [
    ('{"note": "numbers transcribed from the Markdown the benchmark printed"}', 1),
    ('{"note": "copied from the output"}', 1),
    ('{"command": "benchmarks/bench_serve.py --json x", "environment": {"cpu": "Intel Xeon"}}', 0),
])
def test_the_transcription_rule_can_fail(tmp_path, text, hits):
    f = tmp_path / "r.json"
    f.write_text(text)
    assert len(transcribed(f)) == hits
