"""A shrunken `make demo` (few images, two val settings, one step) so the demo path never
silently breaks: val shards for every setting, train shards for the training setting only,
every model on every setting, a second run that evaluates nothing, --force that does."""
import csv
import json

import pytest

from demo.__main__ import main as demo_main
from trainer import evaluation


@pytest.mark.slow
def test_shrunken_demo_end_to_end(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--photos", "4", "--per-photo", "3", "--settings", "lossless,jpeg-10,jpeg-75",
            "--train-setting", "jpeg-10", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4",
            "--jobs", "1", "--workers", "0", "--no-progress"]
    assert demo_main(argv) == 0
    printed = capsys.readouterr().out
    assert "demo wall time" in printed and "step times (wall" in printed
    for name in ("data", "shards", "baseline", "train", "evaluate", "report"):
        assert f" {name} " in printed.split("step times (wall")[1]

    # val: every setting (split layout, the clean crop once in lossless); train: the training setting only
    shards = out / "shards"
    assert sorted(p.name for p in (shards / "val").iterdir()) == ["jpeg-10", "jpeg-75", "lossless"]
    assert sorted(p.name for p in (shards / "train").iterdir()) == ["jpeg-10"]
    assert json.loads((shards / "val" / "jpeg-75" / "manifest.json").read_text())["layout"] == "split"

    # every model on every setting
    rows = json.loads((out / "reports" / "results.json").read_text())
    seen = {(r["method"], r["labels"], r["setting"]) for r in rows}
    for setting in ("lossless", "jpeg-10", "jpeg-75"):
        assert ("pretrained", "dataset", setting) in seen
        assert ("expert", "teacher", setting) in seen and ("finetune", "teacher", setting) in seen
    pretrained_lossless = [r for r in rows if r["method"] == "pretrained" and r["setting"] == "lossless"]
    assert pretrained_lossless[0]["top1"] == 100.0  # val labels are the model's own clean-crop predictions

    # the rate-accuracy figure follows each trained model over every setting; its table is the CSV's
    with (out / "reports" / "fig4_rate_accuracy.csv").open(newline="") as f:
        fig4 = list(csv.DictReader(f))
    expert = {r["setting"]: float(r["top1"]) for r in fig4 if r["method"] == "expert (teacher labels)"}
    assert set(expert) == {"lossless", "jpeg-10", "jpeg-75"}
    assert {r["trained_on"] for r in fig4 if r["method"] == "expert (teacher labels)"} == {"jpeg-10"}
    by_row = {(r["method"], r["labels"], r["setting"]): r["top1"] for r in rows}
    assert expert == {s: by_row[("expert", "teacher", s)] for s in expert}
    table = (out / "reports" / "fig4_rate_accuracy.md").read_text()
    assert "| jpeg-75 |" in table and "expert (teacher labels) top-1 (trained on jpeg-10)" in table
    assert (out / "reports" / "fig4_efficientnet_lite0.png").stat().st_size > 1000
    assert "| lossless |" in (out / "reports" / "table1.md").read_text()

    # a second run reuses everything: no shard rebuilt, no retraining, no evaluation at all
    before = (out / "runs" / "expert-jpeg-10" / "metrics.jsonl").read_text()
    results_before = (out / "reports" / "results.json").read_text()
    real_evaluate_model = evaluation.evaluate_model

    def refuse(*a, **k):
        raise AssertionError("the second run evaluated a model")
    monkeypatch.setattr(evaluation, "evaluate_model", refuse)
    assert demo_main(argv) == 0
    printed = capsys.readouterr().out
    assert "is complete: reused" in printed and "all 4 shards reused" in printed
    assert "pretrained: all 3 evaluations reused" in printed
    assert "expert and fine-tuning: all 6 evaluations reused" in printed
    assert (out / "runs" / "expert-jpeg-10" / "metrics.jsonl").read_text() == before
    assert (out / "reports" / "results.json").read_text() == results_before

    # --force evaluates again (and only evaluates: shards and runs are still reused)
    monkeypatch.setattr(evaluation, "evaluate_model", real_evaluate_model)
    assert demo_main(argv + ["--force"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained: evaluated 3 (model, setting) pair(s), reused 0 (--force)" in printed
    assert "is complete: reused" in printed
