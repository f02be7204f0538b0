"""Every number the prose of README.md and docs/*.md states comes from a committed results file
the page names, from one of the page's generated blocks, or is marked as derived with its
source (docsgen/prose_numbers.py; the rule for writers: docs/contributing.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docsgen.prose_numbers import pages, unsourced  # noqa: E402


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_prose_number_has_a_source(page):
    assert unsourced(page) == []


def _page(root: Path, text: str) -> Path:
    (root / "results").mkdir(exist_ok=True)
    (root / "results" / "r.json").write_text(json.dumps([{"top1": 87.26, "bytes": 761.6, "share": 0.043}]))
    page = root / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_a_planted_number_is_found(tmp_path):
    link = "([`results/r.json`](results/r.json))"
    assert unsourced(_page(tmp_path, f"The expert scores 87.3% {link}.\n"), tmp_path) == []
    assert unsourced(_page(tmp_path, f"It is 762 bytes a crop and 4.3% of the data {link}.\n"), tmp_path) == []
    planted = unsourced(_page(tmp_path, f"The expert scores 88.3% {link}.\n"), tmp_path)
    assert len(planted) == 1 and planted[0].startswith("1: 88.3")
    # the same number without the file named on the page
    assert len(unsourced(_page(tmp_path, "The expert scores 87.3%.\n"), tmp_path)) == 1
    # a whole number with a unit is a measurement too
    assert [p.split(" …")[0] for p in unsourced(_page(tmp_path, f"It took 55 minutes {link}.\n"), tmp_path)] == ["1: 55"]


def test_derived_numbers_name_a_source_that_exists(tmp_path):
    text = "The gap is 1.4 points.\n<!-- derived: 1.4 from results/r.json (87.26 minus the pretrained 85.86) -->\n"
    assert unsourced(_page(tmp_path, text), tmp_path) == []
    # the comment covers its own paragraph only, and only the numbers it names
    assert len(unsourced(_page(tmp_path, text + "\nAnother paragraph says 1.4 points.\n"), tmp_path)) == 1
    assert len(unsourced(_page(tmp_path, text.replace("gap is 1.4", "gap is 1.5")), tmp_path)) == 1
    missing = unsourced(_page(tmp_path, text.replace("results/r.json", "results/gone.json")), tmp_path)
    assert len(missing) == 1 and "not a file of the repository" in missing[0]


def test_what_is_not_a_finding_is_not_checked(tmp_path):
    text = ("<!-- t:start -->\n| a | 91.37 |\n<!-- t:end -->\n\n"
            "Table 1 of the paper; j2k-200 and ResNet-50 on 3 seeds, batch 256, σ 1.5, `--lr 0.0123`, "
            "a 10000×2 JPEG, Python 3.11, in 2024:\n\n```\nspeed 9.87 img/s\n```\n\n"
            "The block shows 91.37%.\n")
    assert unsourced(_page(tmp_path, text), tmp_path) == []
    assert len(unsourced(_page(tmp_path, text.replace("shows 91.37%", "shows 91.38%")), tmp_path)) == 1
