"""A shrunken `make demo` (few images, one setting, one step) so the demo path never silently breaks."""
import json

import pytest

from demo.__main__ import main as demo_main


@pytest.mark.slow
def test_shrunken_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--photos", "4", "--per-photo", "3", "--settings", "lossless,jpeg-10",
            "--train-setting", "jpeg-10", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4",
            "--jobs", "1", "--workers", "0", "--no-progress"]
    assert demo_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "demo wall time" in printed

    rows = json.loads((out / "reports" / "results.json").read_text())
    seen = {(r["method"], r.get("labels"), r["setting"]) for r in rows}
    for setting in ("lossless", "jpeg-10"):
        assert ("pretrained", None, setting) in seen or any(m == "pretrained" and s == setting for m, _, s in seen)
        assert ("expert", "teacher", setting) in seen and ("finetune", "teacher", setting) in seen
    pretrained_lossless = [r for r in rows if r["method"] == "pretrained" and r["setting"] == "lossless"]
    assert pretrained_lossless[0]["top1"] == 100.0  # val labels are the model's own clean-crop predictions

    table = (out / "reports" / "table1.md").read_text()
    assert "| lossless |" in table and "| jpeg-10 |" in table
    png = next((out / "reports").glob("fig4_*.png"))
    assert png.stat().st_size > 1000

    # a second run reuses everything: no retraining (the run folders keep their metrics)
    before = (out / "runs" / "expert-jpeg-10" / "metrics.jsonl").read_text()
    assert demo_main(argv) == 0
    assert "is complete: reused" in capsys.readouterr().out
    assert (out / "runs" / "expert-jpeg-10" / "metrics.jsonl").read_text() == before
