"""``python experiments/figures.py`` draws every figure of the docs from the committed results
files: each PNG is written, has the declared size and is a picture, not a blank canvas; the
docs show every figure it draws."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import figures  # noqa: E402


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    assert figures.main(["--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_figure_is_drawn_from_the_committed_results(drawn, name):
    path = drawn / name
    assert path.is_file() and path.stat().st_size > 10_000, name
    with Image.open(path) as im:
        assert im.format == "PNG"
        width, height = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert 700 <= width <= 2000 and 300 <= height <= 1000, (name, im.size)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 50, f"{name}: {colours} colours, not a drawn figure"
    # bars and curves in colour, not only black on white
    assert (np.ptp(pixels.astype(int), axis=2) > 60).mean() > 0.002, name


def test_every_figure_is_shown_in_the_docs():
    text = "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    shown = set(re.findall(r"!\[[^\]]*\]\((?:docs/)?([\w.-]+\.png)\)", text))
    assert set(figures.FIGURES) <= shown
    for name in figures.FIGURES:
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is not committed (make figures)"


def test_a_missing_results_file_is_one_line(tmp_path, capsys):
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    with pytest.raises(figures.UserError, match="imagenette-cpu.json: no such results file"):
        figures.draw(tmp_path / "out", ["imagenette"], root=tmp_path)
    assert figures.main(["--only", "nosuch", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "nosuch" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_one_figure_from_a_copy_of_its_file(tmp_path):
    """The drawer reads the root it is given: a copy of the results draws the same figure."""
    src = ROOT / figures.PIPELINE
    (tmp_path / src.parent.relative_to(ROOT)).mkdir(parents=True)
    shutil.copy(src, tmp_path / figures.PIPELINE)
    [path] = figures.draw(tmp_path / "out", ["pipeline-throughput"], root=tmp_path)
    [again] = figures.draw(tmp_path / "again", ["pipeline-throughput"])
    with Image.open(path) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
