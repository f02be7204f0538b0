"""experiments/summarize.py: mean ± std over seeds, own-setting rows only, label-free apart."""
import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import summarize  # noqa: E402


def _row(method, setting, top1, trained_on=None, labels="dataset", nbytes=700.0):
    return {"method": method, "setting": setting, "trained_on": trained_on, "labels": labels,
            "top1": top1, "top1_present": top1 + 10, "mean_bytes": nbytes, "selected_on_scored_data": False}


def test_mean_std_own_setting_and_label_free_column():
    rows = [_row("pretrained", "j2k-200", 9.0),
            _row("expert", "j2k-200", 70.0, "j2k-200"), _row("expert", "j2k-200", 74.0, "j2k-200"),
            _row("expert", "jpeg-10", 1.0, "j2k-200", nbytes=2900.0),        # cross-setting: ignored
            _row("finetune", "j2k-200", 75.0, "j2k-200"), _row("finetune", "j2k-200", 77.0, "j2k-200"),
            _row("expert", "j2k-200", 60.0, "j2k-200", labels="teacher")]
    table = summarize.summarize(rows, "top1")
    line = next(l for l in table.splitlines() if l.startswith("| j2k-200"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    got = dict(zip(header, cells))
    assert got["bytes/img"] == "700"
    assert got["pretrained"] == "9.00"
    assert got["expert"] == f"72.00 ± {statistics.stdev([70.0, 74.0]):.2f}"
    assert got["fine-tune"] == f"76.00 ± {statistics.stdev([75.0, 77.0]):.2f}"
    assert got["expert (teacher labels)"] == "60.00"
    assert got["expert − fine-tune"] == "-4.00"
    assert "stability" not in header            # no stability run: no empty column
    assert not any(l.startswith("| jpeg-10") for l in table.splitlines())


def test_readme_block_written(tmp_path):
    import json
    res = tmp_path / "results.json"
    res.write_text(json.dumps([_row("pretrained", "jpeg-10", 50.0)]))
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- imagenette:start -->\nold\n<!-- imagenette:end -->\nafter\n")
    assert summarize.main([str(res), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| jpeg-10 | 700 | 50.00 |" in text and text.endswith("after\n")


def test_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert summarize.main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: not a readable results file") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_imagenette_script_runs_through_the_apis(tmp_path, capsys):
    """experiments/imagenette.py end to end on a tiny synthetic ImageNet-style folder."""
    import torch

    from tests.conftest import make_image_folder
    from trainer.models import build_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments import imagenette

    for split, seed in (("train", 0), ("val", 100)):
        make_image_folder(tmp_path / "src", classes=("n01440764", "n02102040"), per_class=3, size=(260, 240),
                          split=split, seed=seed)
    torch.manual_seed(0)
    torch.save(build_model("mobilenet_v3_small", None, 1000).net.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    argv = ["--src", str(tmp_path / "src"), "--weights", str(tmp_path / "w.pth"), "--arch", "mobilenet_v3_small",
            "--settings", "jpeg-10", "--methods", "finetune expert-teacher", "--seeds", "0", "--epochs", "1",
            "--train-limit", "4", "--batch", "2", "--workers", "0", "--jobs", "1", "--out", str(out),
            "--train-per-class", "2", "--val-per-class", "2", "--select-per-class", "1",
            "--shards", str(tmp_path / "shards"), "--device", "cpu"]
    assert imagenette.main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    assert sorted((r["method"], r["labels"]) for r in rows) == [
        ("expert", "teacher"), ("finetune", "dataset"), ("pretrained", "dataset")]
    assert all(r["count"] == 4 and r["skipped"] == 0 for r in rows)
    assert (out / "runs" / "expert-teacher-jpeg-10-s0" / "best.pth").exists()
    # chosen on the selection split, scored on the val images: never flagged
    assert all(r["selected_on_scored_data"] is False for r in rows)
    assert all(r["checkpoint"].endswith("best.pth") for r in rows if r["checkpoint"])
    meta = json.loads((out / "results.meta.json").read_text())
    assert meta["selection"] == {"split": "train-select", "per_class": 1}
    summary = (out / "summary.md").read_text()
    assert "| jpeg-10 |" in summary and "expert (teacher labels)" in summary
    assert (out / "reports" / "table1.md").exists()
    # complete runs are reused
    before = (out / "runs" / "finetune-jpeg-10-s0" / "metrics.jsonl").read_text()
    assert imagenette.main(argv) == 0
    assert (out / "runs" / "finetune-jpeg-10-s0" / "metrics.jsonl").read_text() == before
