"""trainer.evaluation counts a checkpoint once whatever its spelling, and a --num-classes that
a checkpoint contradicts is an error, not an option silently ignored."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from tests.adversarial.conftest import eval_args, one_error


@pytest.mark.parametrize("second", ["./sub/a.pth", "sub/../sub/a.pth", "link.pth"])
def test_one_checkpoint_under_two_spellings_is_one_row(animals, run_dir, tmp_path, monkeypatch, caplog, second):
    from trainer import evaluation as teval
    (tmp_path / "sub").mkdir()
    shutil.copy(run_dir / "best.pth", tmp_path / "sub" / "a.pth")
    (tmp_path / "link.pth").symlink_to(tmp_path / "sub" / "a.pth")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.json"
    args = eval_args("sub/a.pth", animals["val3"], out) + ["--checkpoint", second]
    with caplog.at_level(logging.WARNING):
        assert teval.main(args) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["checkpoint"].endswith("a.pth")
    assert any("evaluated once" in r.getMessage() and second in r.getMessage() for r in caplog.records)


def test_num_classes_that_a_checkpoint_contradicts_is_an_error(animals, run_dir, tmp_path, capsys):
    from trainer import evaluation as teval
    out = tmp_path / "r.json"
    assert teval.main(eval_args(run_dir / "best.pth", animals["val3"], out, "--num-classes", "10")) == 1
    line = one_error(capsys.readouterr().err)
    assert "3 classes" in line and "--num-classes 10" in line and not out.exists()
    # the checkpoint's own count is accepted
    assert teval.main(eval_args(run_dir / "best.pth", animals["val3"], out, "--num-classes", "3")) == 0
