"""The retention view: trainer.reports.retention, trainer.report's retention.md, the
summaries of experiments/summarize.py, the subsets and experiments/retention.py end to end."""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import pytest

from trainer.reports import report
from trainer.reports.results import load_results, results_from_rows
from trainer.reports.retention import OWN, retention_tables

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import summarize  # noqa: E402
from experiments.subsets import SubsetError, make_subset  # noqa: E402


def grow(method, trained_on, setting, group, top1, present, labels="dataset", seed=0, arch="mobilenet_v2"):
    ck = None if method == "pretrained" else f"runs/{method}-{labels}-{trained_on}-s{seed}/best.pth"
    return {"checkpoint": ck, "weights": "w.pth", "arch": arch, "method": method, "trained_on": trained_on,
            "labels": labels, "setting": setting, "codec": setting.split("-")[0], "q": None, "split": "val",
            "top1": top1, "top5": None, "top1_present": present, "count": 50, "group": group,
            "group_classes": [0, 217] if group == "A" else [482, 491] if group == "B" else None,
            "mean_bytes": 760.0 if setting == "j2k-200" else 50000.0, "selected_on_scored_data": False}


def rows_of_an_experiment():
    rows = []
    for setting in ("j2k-200", "lossless"):
        for group, v in (("A", 10.0), ("B", 20.0), (None, 15.0)):
            rows.append(grow("pretrained", None, setting, group, v + (60 if setting == "lossless" else 0), v + 30))
    for seed, (a, b, bc) in enumerate([(70.0, 5.0, 40.0), (74.0, 7.0, 44.0)]):
        for setting, group, v in (("j2k-200", "A", a), ("j2k-200", "B", b), ("lossless", "A", 75.0),
                                  ("lossless", "B", bc), ("j2k-200", None, (a + b) / 2)):
            rows.append(grow("finetune", "j2k-200", setting, group, v, v + 20, seed=seed))
            rows.append(grow("expert", "j2k-200", setting, group, v + 1, v + 21, labels="teacher", seed=seed))
    return rows


def test_retention_table_cells():
    (t,) = retention_tables(results_from_rows(rows_of_an_experiment()))
    assert t.groups == ["A", "B"] and t.where == [OWN, "lossless"]
    assert [(r.trained_on, r.method) for r in t.rows] == [("j2k-200", "pretrained"), ("j2k-200", "finetune"),
                                                         ("j2k-200", "expert+teacher")]
    pre, ft, lf = t.rows
    assert pre.cell("A", OWN, "top1").values == [10.0] and pre.cell("B", "lossless", "top1").values == [80.0]
    assert ft.cell("A", OWN, "top1").mean == 72.0
    assert ft.cell("A", OWN, "top1").std == pytest.approx(statistics.stdev([70.0, 74.0]))
    assert ft.cell("B", "lossless", "top1").text() == f"42.00 ± {statistics.stdev([40.0, 44.0]):.2f}"
    assert lf.cell("B", OWN, "top1_present").mean == pytest.approx(27.0)
    # whole-setting rows never enter the retention view, and group rows never enter Table 1
    assert all(g in ("A", "B") for r in t.rows for g, _ in r.cells)


def test_bn_frozen_models_are_rows_of_their_own():
    """A --bn frozen run of a method is not averaged with the --bn train runs: its own row, after them."""
    frozen = [{**grow("finetune", "j2k-200", s, g, v, v + 5, seed=9), "bn": "frozen",
               "checkpoint": "runs/finetune-bn-frozen-j2k-200-s9/last.pth"}
              for s, g, v in (("j2k-200", "B", 3.0), ("lossless", "B", 66.0))]
    (t,) = retention_tables(results_from_rows(rows_of_an_experiment() + frozen))
    assert [(r.method, r.bn) for r in t.rows] == [("pretrained", "train"), ("finetune", "train"),
                                                 ("finetune", "frozen"), ("expert+teacher", "train")]
    ft, fz = t.rows[1], t.rows[2]
    assert ft.cell("B", "lossless", "top1").values == [40.0, 44.0]
    assert fz.cell("B", "lossless", "top1").values == [66.0] and fz.cell("B", OWN, "top1_present").values == [8.0]
    text = summarize.retention_report(rows_of_an_experiment() + frozen)
    assert text.count("fine-tune (--bn frozen)") == 2      # 1000-way and top1_present tables


def test_group_rows_stay_out_of_table1_and_the_report_shows_retention(tmp_path):
    rows = rows_of_an_experiment()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    assert all(r.group is None for r in load_results(path))
    assert len(load_results(path, groups=True)) == len([r for r in rows])
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps([r for r in rows if r["group"] is None]))
    a, b = tmp_path / "a", tmp_path / "b"
    report.report([path], None, a)
    report.report([whole], None, b)
    assert (a / "table1.csv").read_text() == (b / "table1.csv").read_text()
    assert not (b / "retention.md").exists()
    text = (a / "retention.md").read_text()
    assert "| j2k-200 | fine-tune | 72.00 ± 2.83 | 6.00 ± 1.41 | 75.00 ± 0.00 | 42.00 ± 2.83 |" in text
    assert "| j2k-200 | pretrained | 10.00 | 20.00 | 70.00 | 80.00 |" in text
    assert "## Retention — mobilenet_v2" in (a / "report.md").read_text()
    lines = (a / "retention.csv").read_text().splitlines()
    assert lines[0].startswith("arch,trained_on,method,group,evaluated_on,top1_mean")
    assert "mobilenet_v2,j2k-200,fine-tune,B,lossless,42.0," in "\n".join(lines)


def test_summarize_views(tmp_path):
    rows = rows_of_an_experiment()
    text = summarize.retention_report(rows)
    assert "over 2 seed(s)" in text
    assert "| j2k-200 | expert (teacher labels) | 73.00 ± 2.83 |" in text
    # the table1 view of the same rows ignores the group rows
    assert "| j2k-200 | 760 | 15.00 | 39.00 ± 2.12 |" in summarize.summarize(rows)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rows))
    (tmp_path / "r.meta.json").write_text(json.dumps({
        "arch": "mobilenet_v2", "seeds": [0, 1], "train_per_class": 300, "order": "mixed", "shard_size": 500,
        "val_per_class": 100, "epochs": 1, "batch": 32, "steps_per_run": [46], "lr": 1e-4, "alpha": 0.01,
        "device": "cpu", "machine": "x86_64, 2 cores", "workers": 1,
        "loader": {"s0": {"distinct_per_batch": 9.5, "iid": 9.66, "classes_seen": 10, "classes": 10}}}))
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- retention:start -->\nold\n<!-- retention:end -->\ny\n")
    assert summarize.main([str(path), "--readme", str(readme), "--block", "retention"]) == 0
    out = readme.read_text()
    assert "old" not in out and "A (own setting)" in out and "46 steps per run" in out
    assert "9.50 distinct classes per batch (an i.i.d. draw: 9.66) and 10 of 10 classes" in out


def test_compare_side_by_side(tmp_path, capsys):
    def own(method, value, seed):
        return grow(method, "j2k-200", "j2k-200", None, value, value + 5, seed=seed)
    mixed = [own("finetune", 60.0, 0), own("finetune", 62.0, 1), own("expert", 63.0, 0), own("expert", 63.0, 1)]
    sort_ = [own("finetune", 40.0, 0), own("finetune", 44.0, 1), own("expert", 50.0, 0), own("expert", 50.0, 1)]
    (tmp_path / "m.json").write_text(json.dumps(mixed))
    (tmp_path / "s.json").write_text(json.dumps(sort_))
    assert summarize.main(["--compare", f"mixed={tmp_path / 'm.json'}", "--compare",
                           f"sorted={tmp_path / 's.json'}", "--setting", "j2k-200"]) == 0
    out = capsys.readouterr().out
    assert "| j2k-200 | mixed | 760 | — | 61.00 ± 1.41 | 63.00 ± 0.00 | +2.00 |" in out
    assert "| j2k-200 | sorted | 760 | — | 42.00 ± 2.83 | 50.00 ± 0.00 | +8.00 |" in out
    assert summarize.main(["--compare", f"mixed={tmp_path / 'm.json'}"]) == 1
    assert "two results files" in capsys.readouterr().err
    assert summarize.main([str(tmp_path / "m.json"), "--view", "retention"]) == 1
    assert "no rows of class groups" in capsys.readouterr().err


def test_subsets_are_seeded_per_class_and_reused(tmp_path):
    from pipeline.sources import list_source
    from tests.conftest import make_image_folder

    classes = ("n01440764", "n02102040", "n02979186")
    make_image_folder(tmp_path / "src", classes=classes, per_class=6, size=(64, 64), split="train")
    all3 = make_subset(tmp_path / "src", tmp_path / "all", {"train": 4}, seed=1)
    only_a = make_subset(tmp_path / "src", tmp_path / "a", {"train": 4}, classes=["n02102040"], seed=1)
    files = {c: sorted(os.listdir(all3 / "train" / c)) for c in classes}
    assert all(len(v) == 4 for v in files.values())
    assert sorted(os.listdir(only_a / "train")) == ["n02102040"]
    assert sorted(os.listdir(only_a / "train" / "n02102040")) == files["n02102040"]   # the same draw
    assert files != {c: sorted(os.listdir(make_subset(tmp_path / "src", tmp_path / "s2", {"train": 4}, seed=2)
                                          / "train" / c)) for c in classes}
    link = only_a / "train" / "n02102040" / files["n02102040"][0]
    assert link.is_symlink() and link.resolve() == (tmp_path / "src" / "train" / "n02102040" / link.name).resolve()
    # labels stay ImageNet-1k indices, and the record sits outside the split folder
    src = list_source(only_a, "train")
    assert {it.label for it in src.items} == {217} and not src.rejected
    mtime = link.lstat().st_mtime_ns
    make_subset(tmp_path / "src", tmp_path / "a", {"train": 4}, classes=["n02102040"], seed=1)
    assert link.lstat().st_mtime_ns == mtime                     # reused, not remade
    with pytest.raises(SubsetError, match="holds another subset"):
        make_subset(tmp_path / "src", tmp_path / "a", {"train": 5}, classes=["n02102040"], seed=1)
    with pytest.raises(SubsetError, match="no class folder"):
        make_subset(tmp_path / "src", tmp_path / "b", {"train": 4}, classes=["n99999999"])


@pytest.mark.slow
def test_retention_script_end_to_end(tmp_path, capsys):
    """experiments/retention.py on a tiny synthetic ImageNet-style folder: groups A/B, three
    methods, the pretrained model, the summary and the meta file; a second call reuses all."""
    import torch

    from experiments import retention
    from tests.conftest import make_image_folder
    from trainer.models import build_model

    classes = ("n01440764", "n02102040", "n02979186", "n03000684")
    for split, seed in (("train", 0), ("val", 100)):
        make_image_folder(tmp_path / "src", classes=classes, per_class=3, size=(240, 232), split=split, seed=seed)
    torch.manual_seed(0)
    torch.save(build_model("mobilenet_v3_small", None, 1000).net.state_dict(), tmp_path / "w.pth")
    results = tmp_path / "results" / "ret.json"
    argv = ["--src", str(tmp_path / "src"), "--weights", str(tmp_path / "w.pth"), "--arch", "mobilenet_v3_small",
            "--settings", "jpeg-10", "--seeds", "0", "--train-per-class", "2", "--val-per-class", "2",
            "--a-classes", "n01440764 n02102040", "--b-classes", "n02979186,n03000684", "--batch", "2",
            "--workers", "0", "--jobs", "1", "--out", str(tmp_path / "out"), "--results", str(results),
            "--bn-results", str(results.parent / "bn.json"), "--bn", "train frozen",
            "--shards", str(tmp_path / "work" / "shards"), "--device", "cpu"]
    assert retention.main(argv) == 0
    rows = json.loads(results.read_text())
    got = {(r["method"], r["labels"], r["setting"], r["group"]) for r in rows}
    for m, lab in (("pretrained", "dataset"), ("finetune", "dataset"), ("expert", "dataset"), ("expert", "teacher")):
        for setting in ("jpeg-10", "lossless"):
            assert {(m, lab, setting, g) for g in (None, "A", "B")} <= got
    assert all(r["count"] == 4 for r in rows if r["group"])   # 2 val images of each of a group's 2 classes
    manifest = json.loads(next((tmp_path / "work" / "shards").glob("*-A/mixed/train/jpeg-10/manifest.json"))
                          .read_text())
    assert sorted(manifest["class_index"].values()) == [0, 217]           # A only, ImageNet indices
    meta = json.loads((results.parent / "ret.meta.json").read_text())
    assert meta["groups"]["B"] == ["n02979186", "n03000684"] and meta["steps_per_run"] == [2]
    assert meta["selection"] == "last epoch"
    assert all(r["selected_on_scored_data"] is False for r in rows)
    out = capsys.readouterr().out
    assert "A (own setting)" in out and "B (lossless)" in out
    # the batch-norm check: the trained weights with the pretrained statistics, on clean images only
    bn = json.loads((results.parent / "bn.json").read_text())
    assert {r["setting"] for r in bn} == {"lossless"}
    assert sorted({r["checkpoint"] for r in bn if r["checkpoint"]}) == sorted(   # relative to the results file
        f"../out/runs/{run}/last-pretrained-bn.pth"
        for run in ("finetune-jpeg-10-s0", "expert-jpeg-10-s0", "expert-teacher-jpeg-10-s0"))
    # --bn frozen: every method again, its rows tagged, scored on A and B, compressed and clean,
    # 1000-way and over the classes present, shown as rows of their own
    for run in ("finetune-bn-frozen-jpeg-10-s0", "expert-bn-frozen-jpeg-10-s0", "expert-teacher-bn-frozen-jpeg-10-s0"):
        mine = [r for r in rows if r["checkpoint"] == f"../out/runs/{run}/last.pth"]
        assert {(r["setting"], r["group"]) for r in mine} == {(s, g) for s in ("jpeg-10", "lossless")
                                                              for g in (None, "A", "B")}
        assert {r["bn"] for r in mine} == {"frozen"}
        assert all(r["top1"] is not None and r["top1_present"] is not None for r in mine)
        assert json.loads((tmp_path / "out" / "runs" / run / "args.json").read_text())["bn"] == "frozen"
    assert {r["bn"] for r in rows if r["checkpoint"] and "bn-frozen" not in r["checkpoint"]} == {"train"}
    assert meta["bn"] == ["train", "frozen"]
    assert "fine-tune (--bn frozen)" in out and "expert (teacher labels) (--bn frozen)" in out
    before = (results.read_text(), (tmp_path / "out" / "runs" / "finetune-jpeg-10-s0" / "metrics.jsonl").read_text())
    assert retention.main(argv) == 0
    assert (results.read_text(), (tmp_path / "out" / "runs" / "finetune-jpeg-10-s0" / "metrics.jsonl")
            .read_text()) == before
    assert retention.main(argv + ["--settings", "lossless"]) == 1
    assert "lossless is the clean reference" in capsys.readouterr().err


def test_pretrained_bn_variant_keeps_the_weights_and_swaps_the_statistics(tmp_path):
    import torch

    from experiments.retention import with_pretrained_bn
    from trainer import checkpoint
    from trainer.models import build_model

    torch.manual_seed(0)
    pre = build_model("mobilenet_v3_small", None, 10).net
    torch.save(pre.state_dict(), tmp_path / "w.pth")
    trained = build_model("mobilenet_v3_small", None, 10).net
    for m in trained.modules():   # as after training on other images: other weights and statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(1.0)
            m.running_var.mul_(3.0)
    checkpoint.save({"model": trained.state_dict(), "arch": "mobilenet_v3_small", "num_classes": 10, "epoch": 1,
                     "optimizer": {"x": 1}, "scheduler": {}, "args": {"method": "finetune"}}, tmp_path / "best.pth")
    out = with_pretrained_bn(tmp_path / "best.pth", "mobilenet_v3_small", str(tmp_path / "w.pth"))
    got = checkpoint.load(out)
    ref, new = pre.state_dict(), trained.state_dict()
    for k, v in got["model"].items():
        want = ref[k] if k.endswith(("running_mean", "running_var", "num_batches_tracked")) else new[k]
        assert torch.equal(v, want), k
    assert any(k.endswith("running_var") for k in got["model"]) and got["args"] == {"method": "finetune"}
    assert got["optimizer"] == {}


def test_readme_blocks_are_generated_from_the_results_files():
    """Every experiment table of docs/results.md is what summarize.py makes of the committed
    results files (regenerate: python experiments/summarize.py --all-blocks docs/results.md)."""
    import re

    text = (ROOT / summarize.RESULTS_PAGE).read_text(encoding="utf-8")
    for name, argv in summarize.readme_blocks().items():
        m = re.search(rf"<!-- {re.escape(name)}:start -->\n(.*?)\n<!-- {re.escape(name)}:end -->", text, re.S)
        assert m, f"{summarize.RESULTS_PAGE} has no {name} block"
        assert m.group(1).strip() == summarize.block(argv).strip(), f"block {name} is out of date"


def _md_tables(text):
    """The Markdown tables of ``text``: [(header, rows)], cells stripped."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            tables.append((block[0], block[2:]))   # block[1]: the alignment line
            block = []
    return tables


def test_report_retention_cells_are_the_mean_and_std_of_the_input_rows(tmp_path, capsys):
    """trainer.reports.report on group rows (A and B on the compressed setting, B on the clean images) of
    pretrained / fine-tune / expert over 3 seeds: every cell of retention.md and retention.csv is
    the mean ± sample std of its input values, computed here with numpy; rows without groups give
    no retention section."""
    import csv

    import numpy as np

    from trainer.reports.report import main as report_main

    rng = np.random.default_rng(13)
    cells = [("A", "j2k-200"), ("B", "j2k-200"), ("B", "lossless")]
    runs = {"pretrained": [None], "finetune": [0, 1, 2], "expert": [0, 1, 2]}
    values, rows = {}, []
    for method, seeds in runs.items():
        for seed in seeds:
            trained_on = None if method == "pretrained" else "j2k-200"
            for group, setting in cells:
                top1, present = (float(v) for v in rng.uniform(0, 100, 2))
                values.setdefault((method, group, setting), []).append((top1, present))
                rows.append(grow(method, trained_on, setting, group, top1, present, seed=seed or 0))
            for setting in ("j2k-200", "lossless"):   # the whole-setting rows: Table 1, never retention
                rows.append(grow(method, trained_on, setting, None, 50.0, 60.0, seed=seed or 0))
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    assert report_main(["--results", str(path), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()

    def parse(text):
        mean, _, std = text.partition(" ± ")
        return float(mean), (float(std) if std else None)

    titles = {"pretrained": "pretrained", "finetune": "fine-tune", "expert": "expert"}
    tables = _md_tables((tmp_path / "out" / "retention.md").read_text())
    assert len(tables) == 2   # 1000-way top-1, then top1_present
    for (header, body), which in zip(tables, (0, 1)):
        assert header == ["trained on", "method", "A (own setting)", "B (own setting)", "A (lossless)",
                          "B (lossless)"]
        assert [r[:2] for r in body] == [["j2k-200", titles[m]] for m in runs]
        for r, method in zip(body, runs):
            got = dict(zip(header[2:], r[2:]))
            assert got["A (lossless)"] == "—"    # nobody was scored on A's clean images
            for group, setting in cells:
                v = np.array([x[which] for x in values[(method, group, setting)]])
                mean, std = parse(got[f"{group} ({'own setting' if setting == 'j2k-200' else setting})"])
                assert abs(mean - v.mean()) <= 0.005 + 1e-9, (method, group, setting)
                if len(v) == 1:
                    assert std is None
                else:
                    assert abs(std - v.std(ddof=1)) <= 0.005 + 1e-9, (method, group, setting)
    with open(tmp_path / "out" / "retention.csv", newline="") as f:
        csv_rows = {(r["method"], r["group"], r["evaluated_on"]): r for r in csv.DictReader(f)}
    assert len(csv_rows) == len(runs) * len(cells)
    for method in runs:
        for group, setting in cells:
            v = np.array(values[(method, group, setting)])
            r = csv_rows[(titles[method], group, setting)]
            assert int(r["n"]) == len(v)
            assert float(r["top1_mean"]) == pytest.approx(v[:, 0].mean(), rel=1e-12)
            assert float(r["top1_present_mean"]) == pytest.approx(v[:, 1].mean(), rel=1e-12)
            if len(v) > 1:
                assert float(r["top1_std"]) == pytest.approx(v[:, 0].std(ddof=1), rel=1e-9)
                assert float(r["top1_present_std"]) == pytest.approx(v[:, 1].std(ddof=1), rel=1e-9)
            else:
                assert r["top1_std"] == r["top1_present_std"] == ""
    assert "## Retention — mobilenet_v2" in (tmp_path / "out" / "report.md").read_text()

    # the same results without their group rows: the report has no retention section at all
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps([r for r in rows if r["group"] is None]))
    assert report_main(["--results", str(whole), "--out", str(tmp_path / "plain")]) == 0
    assert "Retention" not in (tmp_path / "plain" / "report.md").read_text()
    assert not (tmp_path / "plain" / "retention.md").exists() and not (tmp_path / "plain" / "retention.csv").exists()
    assert (tmp_path / "plain" / "table1.csv").read_text() == (tmp_path / "out" / "table1.csv").read_text()
