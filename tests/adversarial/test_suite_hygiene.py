"""The suite's own rules, checked: a test that reads ../shared carries the ``shared`` marker
(it fails at once without it, with or without ../shared), and no test leaves temporary
folders behind (``tempfile.mkdtemp`` and friends outside pytest's own temporary folders)."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT, shared_path


def test_reading_shared_without_the_marker_fails():
    with pytest.raises(pytest.fail.Exception, match="without the `shared` marker"):
        shared_path("bpg-vectors")


@pytest.mark.shared
def test_reading_shared_with_the_marker_reads_or_skips():
    assert shared_path("bpg-vectors").is_dir()        # absent: skipped with a reason


LEAKY = {"mkdtemp", "mkstemp", "mktemp", "TemporaryDirectory", "NamedTemporaryFile"}


def _leaks(path) -> list[str]:
    """Calls of tempfile's makers in a test module: each leaves a folder or file in /tmp unless
    the test removes it; pytest's tmp_path / tmp_path_factory are the suite's way."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            if name in LEAKY and owner in (None, "tempfile"):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: tempfile.{name}")
    return out


def test_no_test_makes_temporary_folders_of_its_own():
    found = [hit for p in sorted((ROOT / "tests").rglob("*.py")) if p.name != "test_suite_hygiene.py"
             for hit in _leaks(p)]
    assert found == [], "use tmp_path / tmp_path_factory: " + "; ".join(found)
