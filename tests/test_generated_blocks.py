"""Every generated block of the docs is what its committed results files render to: a number
typed between the markers, or a results file changed without its block, fails here.
(Refresh: python docsgen/readme_block.py --all.)"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docsgen import readme_block as rb  # noqa: E402
from pipeline.markdown import parse_document, render_document  # noqa: E402


@pytest.mark.parametrize("block", rb.BLOCKS, ids=lambda b: f"{b.file}:{b.name}")
def test_block_is_rendered_from_its_committed_files(block):
    for source in block.sources():
        assert (ROOT / source).is_file(), f"{block.name}: {source} is not in the repository"
    text = (ROOT / block.file).read_text(encoding="utf-8")
    got = rb.read_block(text, block.name)
    assert got is not None, f"{block.file} has no block {block.name}"
    assert got.strip() == block.render(ROOT).strip(), \
        f"{block.file}: block {block.name} is not what {', '.join(block.sources())} renders " \
        "(python docsgen/readme_block.py --all)"


def test_every_block_of_the_docs_is_in_the_registry():
    files = rb.doc_files(ROOT)
    assert ROOT / "README.md" in files and ROOT / "tools/bpg/README.md" in files
    known = {(b.file, b.name) for b in rb.BLOCKS}
    found = {(p.relative_to(ROOT).as_posix(), n) for p in files for n in rb.block_names(p.read_text(encoding="utf-8"))}
    assert found - known == set(), "blocks with no source and renderer in docsgen/readme_block.py"
    assert known - found == set(), "registry entries with no block in the docs"
    assert len(found) >= 16


def test_check_finds_a_hand_edit(tmp_path):
    """The check the test above makes, on a copy: one digit changed between markers is found,
    and a refresh from the committed files puts the rendered text back."""
    for b in rb.BLOCKS:
        for rel in [b.file, *b.sources(), *[s.replace(".json", ".meta.json") for s in b.sources()]]:
            if (ROOT / rel).exists() and not (tmp_path / rel).exists():
                (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / rel, tmp_path / rel)
    (tmp_path / "trainer").mkdir(exist_ok=True)
    readme = tmp_path / "docs" / "benchmarks.md"
    original = readme.read_text(encoding="utf-8")
    assert rb.stale(tmp_path) == []
    edited = original.replace("| expert-cached | 14068.6 |", "| expert-cached | 14068.7 |")
    assert edited != original
    readme.write_text(edited, encoding="utf-8")
    assert rb.stale(tmp_path) == ["docs/benchmarks.md: block trainer-gpu differs from what "
                                  "benchmarks/results/trainer-gpu-resnet50.json, "
                                  "benchmarks/results/trainer-gpu-mobilenet_v2.json renders"]
    assert rb.refresh([b for b in rb.BLOCKS if b.name == "trainer-gpu"], tmp_path) == ["docs/benchmarks.md: trainer-gpu"]
    assert readme.read_text(encoding="utf-8") == original


def test_a_block_without_a_source_is_found(tmp_path):
    # a copy of every registered block's page and source files: the typed block is the only fault
    for rel in {f for b in rb.BLOCKS for f in (b.file, *b.sources())}:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
        meta = (ROOT / rel).with_suffix(".meta.json")
        if meta.is_file():
            shutil.copy(meta, tmp_path / rel.replace(".json", ".meta.json"))
    (tmp_path / "docs" / "notes.md").write_text("<!-- typed:start -->\n| a |\n|---|\n| 1 |\n<!-- typed:end -->\n")
    assert rb.stale(tmp_path) == ["docs/notes.md: block typed has no source in docsgen/readme_block.py"]


def test_results_file_keeps_the_tables_as_cells(tmp_path):
    """``save`` writes the command (no absolute path), the environment and the parts; the
    table's cells are data, and rendering gives the printed Markdown back."""
    text = ("Caption (2 cores)\n\n| setting | ms | KB |\n|---|---:|---:|\n| jpeg-10 | 2.15 | 65.6 |\n"
            "| all |  | 9.0 |\n\nA note.\nA second line.")
    path = rb.save(tmp_path / "r.json", text, "benchmarks/bench_x.py",
                   ["--json", str(tmp_path / "r.json"), f"--out={ROOT / 'bench-out'}"])
    data = json.loads(path.read_text())
    assert data["command"] == "python benchmarks/bench_x.py --json r.json --out=bench-out"
    assert data["environment"]["cpu_cores"] >= 1 and set(data["environment"]["packages"]) >= {"torch", "numpy"}
    assert data["hardware"].endswith("CPU")
    table = data["parts"][1]["table"]
    assert table["header"] == ["setting", "ms", "KB"] and table["align"] == "lrr"
    assert table["rows"] == [["jpeg-10", "2.15", "65.6"], ["all", "", "9.0"]]
    assert data["parts"][2] == {"text": "A note.\nA second line."}
    assert rb.render_documents(["r.json"], tmp_path) == text


def test_parse_document_round_trip_on_every_document_block():
    for b in rb.BLOCKS:
        if b.renderer == "document":
            text = rb.read_block((ROOT / b.file).read_text(encoding="utf-8"), b.name)
            assert render_document(parse_document(text)).strip() == text.strip(), b.name


def test_cli_check_and_unknown_block(capsys):
    assert rb.main(["--check"]) == 0
    assert rb.main(["no-such-block"]) == 2
    assert "unknown: no-such-block" in capsys.readouterr().err


def test_demo_docs_write_the_results_file_and_render_the_block(tmp_path, monkeypatch):
    """``python -m demo --readme``: docs/demo-results.json holds the table as cells and the
    README's demo block is rendered from it (on a copy of the docs)."""
    from types import SimpleNamespace

    import demo.__main__ as demo_main

    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    monkeypatch.setattr(demo_main, "ROOT", tmp_path)
    plot = tmp_path / "fig4.png"
    plot.write_bytes(b"\x89PNG fake")
    table = "## Rate-accuracy\n\n| setting | bytes/image | pretrained top-1 |\n|---|---:|---:|\n| jpeg-10 | 2795 | 45.14 |"
    steps = [("data", 13.0, 20.0), ("train", 192.0, 380.0)]
    demo_main.update_readme(plot, table, 205.0, steps, SimpleNamespace(epochs=3, lr=1e-4, alpha=1e-2),
                            "efficientnet_lite0", "teacher", "j2k-200", "bf16")
    data = json.loads((tmp_path / "docs" / "demo-results.json").read_text())
    assert data["command"].startswith("python -m demo") and data["environment"]["cpu_cores"] >= 1
    assert {"table": {"header": ["setting", "bytes/image", "pretrained top-1"], "align": "lrr",
                      "rows": [["jpeg-10", "2795", "45.14"]]}} in data["parts"]
    block = rb.read_block((tmp_path / "README.md").read_text(encoding="utf-8"), "demo")
    assert block.strip() == rb.render_documents(["docs/demo-results.json"], tmp_path).strip()
    assert "precision bf16" in block and "wall time 3.4 min" in block and "data 13 s, train 192 s" in block
    assert (tmp_path / "docs" / "demo_rate_accuracy.png").read_bytes() == plot.read_bytes()
    assert (ROOT / "docs" / "demo-results.json").read_text() != (tmp_path / "docs" / "demo-results.json").read_text()
