"""trainer.reports.report on tiny hand-written manifests and results: the tables repeat the inputs,
blanks where nothing was measured, and the figures plot exactly what their CSVs say."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from trainer.reports import report
from trainer.reports.results import load_manifests, load_results

# setting -> (q, mean bytes, psnr, ssim)
SETTINGS = {
    "lossless": (None, 68000.0, None, 1.0),
    "jpeg-75": (75, 10899.0, 32.04, 0.917),
    "jpeg-10": (10, 3018.0, 25.27, 0.738),
    "j2k-200": (200, 761.0, 21.19, 0.499),
    "bpg-41": (41, 1795.0, 25.66, 0.752),
}


def bpp(nbytes: float) -> float:
    return nbytes * 8 / (224 * 224)


def write_manifests(shards: Path, settings=SETTINGS, split: str = "val") -> None:
    for s, (q, nbytes, psnr, ssim) in settings.items():
        d = shards / split / s
        d.mkdir(parents=True, exist_ok=True)
        stats = {"bytes": nbytes, "bpp": bpp(nbytes), "psnr": psnr, "ssim": ssim}
        (d / "manifest.json").write_text(json.dumps({
            "codec": s.split("-")[0], "q": q, "setting": s, "split": split, "count": 4,
            "mean": stats, "median": stats, "shards": [{"name": "shard-000000.tar", "count": 4}],
            "classes": ["n01440764"], "num_classes": 1000, "failed": []}))


def row(method, trained_on, setting, top1, arch="resnet50", labels="dataset", nbytes=None):
    q, mb, _, _ = SETTINGS.get(setting, (None, nbytes, None, None))
    mb = nbytes if nbytes is not None else mb
    return {"checkpoint": None if method == "pretrained" else f"runs/{arch}-{method}-{trained_on}/best.pth",
            "weights": "IMAGENET1K_V1", "arch": arch, "method": method, "trained_on": trained_on,
            "setting": setting, "codec": setting.split("-")[0], "q": q, "top1": top1, "top5": None if top1 is None else min(100.0, top1 + 10),
            "count": 4, "mean_bytes": mb, "mean_bpp": bpp(mb), "labels": labels,
            "selected_on_scored_data": False}


RESULTS = [
    row("pretrained", None, "lossless", 75.8), row("pretrained", None, "jpeg-75", 73.7),
    row("pretrained", None, "jpeg-10", 49.6), row("pretrained", None, "j2k-200", 14.5),
    row("pretrained", None, "bpg-41", 57.9),
    row("stability", "jpeg-10", "jpeg-10", 52.8),
    row("finetune", "jpeg-10", "jpeg-10", 69.4), row("expert", "jpeg-10", "jpeg-10", 69.9),
    row("expert", "jpeg-10", "jpeg-75", 74.0), row("expert", "jpeg-10", "bpg-41", 60.0),  # cross-setting
    row("finetune", "j2k-200", "j2k-200", 48.3), row("expert", "j2k-200", "j2k-200", 48.8),
    row("expert", "bpg-41", "bpg-41", 70.1), row("expert", "bpg-41", "bpg-41", 70.6),    # two runs: best
    row("expert", "bpg-41", "bpg-41", 69.0, labels="teacher"),
    row("pretrained", None, "jpeg-10", 45.9, arch="mnasnet1_0"),
]


@pytest.fixture
def measured(tmp_path):
    shards, results = tmp_path / "shards", tmp_path / "results.json"
    write_manifests(shards)
    results.write_text(json.dumps(RESULTS))
    return tmp_path, shards, results


def run_report(tmp_path, shards, results, *extra) -> Path:
    out = tmp_path / "reports"
    assert report.main(["--shards", str(shards), "--results", str(results), "--out", str(out), *extra]) == 0
    return out


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def num(text: str) -> float | None:
    return None if text == "" else float(text)


# --------------------------------------------------------------------------- Table 1

def test_table1_repeats_inputs_with_blanks(measured):
    out = run_report(*measured)
    rows = [r for r in read_csv(out / "table1.csv") if r["arch"] == "resnet50"]
    assert [r["setting"] for r in rows] == ["lossless", "jpeg-75", "jpeg-10", "j2k-200", "bpg-41"]
    by = {r["setting"]: r for r in rows}
    for s, (_, nbytes, psnr, ssim) in SETTINGS.items():
        assert num(by[s]["bytes"]) == nbytes and num(by[s]["psnr"]) == psnr and num(by[s]["ssim"]) == ssim
    jpeg10 = by["jpeg-10"]
    assert (num(jpeg10["top1_pretrained"]), num(jpeg10["top1_stability"]), num(jpeg10["top1_finetune"]),
            num(jpeg10["top1_expert"])) == (49.6, 52.8, 69.4, 69.9)
    assert num(jpeg10["gain"]) == pytest.approx(0.5)
    # blanks: no stability / fine-tune run on bpg-41, no trained model on lossless
    assert by["bpg-41"]["top1_stability"] == "" and by["bpg-41"]["top1_finetune"] == "" and by["bpg-41"]["gain"] == ""
    assert by["lossless"]["top1_expert"] == "" and num(by["lossless"]["top1_pretrained"]) == 75.8
    # the expert trained on jpeg-10 but evaluated on jpeg-75 is not a Table 1 cell
    assert by["jpeg-75"]["top1_expert"] == ""
    # two runs of one configuration: the best is shown
    assert num(by["bpg-41"]["top1_expert"]) == 70.6


def test_table1_markdown(measured):
    out = run_report(*measured)
    md = (out / "table1.md").read_text()
    assert "## Table 1 — resnet50" in md and "## Table 1 — mnasnet1_0" in md
    assert "| jpeg-10 | 25.27 | 0.738 | 3018 | 0.481 | 49.60 | 52.80 | 69.40 | 69.90 | — | 0.50 |" in md
    assert "| lossless | ∞ | 1.000 | 68000 |" in md
    assert "expert on bpg-41 (2)" in md  # says the cell is a best of two


def test_teacher_labels_are_a_separate_method(measured):
    out = run_report(*measured)
    md = (out / "table1.md").read_text()
    assert "expert (teacher labels) top-1" in md
    by = {r["setting"]: r for r in read_csv(out / "table1.csv") if r["arch"] == "resnet50"}
    assert num(by["bpg-41"]["top1_expert+teacher"]) == 69.0
    assert num(by["bpg-41"]["top1_expert"]) == 70.6
    methods = {r["method"] for r in read_csv(out / "fig4_rate_accuracy.csv")}
    assert "expert (teacher labels)" in methods


def test_paper_columns(measured, tmp_path):
    paper = tmp_path / "paper.json"
    paper.write_text(json.dumps({"settings": [
        {"codec": "jpeg", "q": 10, "psnr": 25.0, "ssim": 0.7, "bytes": 3000,
         "resnet50": {"pretrained": 49.0, "stability": 52.0, "finetune": 69.0, "expert": 70.0}},
        {"codec": "lossless", "q": None, "psnr": None, "ssim": 1.0, "bytes": None,
         "resnet50": {"pretrained": 75.0, "stability": 74.0, "finetune": 76.0, "expert": 77.0}}]}))
    out = run_report(*measured, "--paper", str(paper), "--paper-arch", "resnet50", "--arch", "resnet50")
    by = {r["setting"]: r for r in read_csv(out / "table1.csv")}
    assert num(by["jpeg-10"]["paper_expert"]) == 70.0 and num(by["jpeg-10"]["paper_bytes"]) == 3000
    assert num(by["jpeg-10"]["paper_gain"]) == pytest.approx(1.0)
    assert num(by["lossless"]["paper_pretrained"]) == 75.0
    assert by["bpg-41"]["paper_expert"] == ""  # the paper file has no bpg-41 here
    assert "paper expert" in (out / "table1.md").read_text()
    assert report.main(["--results", str(measured[2]), "--out", str(tmp_path / "x"), "--paper", str(paper),
                        "--paper-arch", "vgg16"]) == 1


def test_manifests_only_and_nothing(tmp_path, capsys):
    write_manifests(tmp_path / "shards")
    out = run_report(tmp_path, tmp_path / "shards", tmp_path / "absent.json")
    rows = read_csv(out / "table1.csv")
    assert len(rows) == 5 and all(r["top1_expert"] == "" for r in rows)
    assert "does not exist yet" in capsys.readouterr().err
    rc = report.main(["--results", str(tmp_path / "absent.json"), "--out", str(tmp_path / "r2")])
    assert rc == 1 and "nothing to report" in capsys.readouterr().err


def test_setting_without_manifest_uses_eval_bytes(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([row("pretrained", None, "bpg-46", 43.0, nbytes=870.0)]))
    out = run_report(tmp_path, tmp_path / "no-shards", results)
    by = {r["setting"]: r for r in read_csv(out / "table1.csv")}
    assert num(by["bpg-46"]["bytes"]) == 870.0 and by["bpg-46"]["psnr"] == ""
    assert "no manifest for bpg-46" in (out / "report.md").read_text()


def test_unevaluated_runs_are_listed(measured):
    tmp_path, shards, results = measured
    run = tmp_path / "runs" / "r50-jpeg20"
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"method": "expert", "arch": "resnet50", "trained_on": "jpeg-20"}))
    out = run_report(tmp_path, shards, results, "--runs", str(tmp_path / "runs"))
    text = (out / "report.md").read_text()
    assert "run `r50-jpeg20` (expert, resnet50, trained on jpeg-20) has no evaluation results" in text


# --------------------------------------------------------------------------- figures

def png_ok(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100


@pytest.mark.parametrize("x", ["bytes", "bpp"])
def test_fig4_plots_the_csv(measured, x):
    tmp_path, shards, results = measured
    out = run_report(tmp_path, shards, results, "--x", x)
    png_ok(out / "fig4_resnet50.png")
    rows = [r for r in read_csv(out / "fig4_rate_accuracy.csv") if r["arch"] == "resnet50"]
    assert {r["x"] for r in rows} == {x}
    # rate values are the manifests' / evaluation's, top-1 the results'
    jpeg_expert = [r for r in rows if r["codec"] == "jpeg" and r["method"] == "expert"]
    assert [(r["setting"], float(r["rate"]), float(r["top1"])) for r in jpeg_expert] == [
        ("jpeg-10", 3018.0 if x == "bytes" else bpp(3018.0), 69.9)]
    # the figure's lines carry exactly the CSV's points: curves per codec panel, lossless as reference lines
    series = report.rate_accuracy_series(load_results(results), load_manifests(shards), "resnet50", x)
    fig = report.plot_rate_accuracy(series, tmp_path / "again.png", x, caption="top-1 means this")
    assert [ax.get_title() for ax in fig.axes] == ["JPEG", "JPEG 2000", "BPG"]
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    curves = [line for line in lines if line.get_gid() == "curve"]
    assert len(curves) == len([s for s in series if s.codec != "lossless"])
    plotted = sorted((line.get_label(), float(a), float(b))
                     for line in curves for a, b in zip(line.get_xdata(), line.get_ydata()))
    in_csv = sorted((r["curve"], float(r["rate"]), float(r["top1"])) for r in rows if r["codec"] != "lossless")
    assert [p[0] for p in plotted] == [c[0] for c in in_csv]
    assert [v for p in plotted for v in p[1:]] == pytest.approx([v for c in in_csv for v in c[1:]])
    # lossless: a horizontal line at each model's clean-crop top-1, in every panel, not a point
    refs = {(line.get_label(), float(line.get_ydata()[0])) for line in lines if line.get_gid() == "lossless"}
    assert refs == {(r["curve"], float(r["top1"])) for r in rows if r["codec"] == "lossless"}
    assert len([line for line in lines if line.get_gid() == "lossless"]) == len(refs) * len(fig.axes)
    assert all(float(line.get_ydata()[0]) == float(line.get_ydata()[1]) for line in lines
               if line.get_gid() == "lossless")
    # every plotted point is named by its setting; the caption is on the figure
    named = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {r["setting"] for r in rows if r["codec"] != "lossless"} <= named
    assert any(t.get_text() == "top-1 means this" for t in fig.texts)
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "top-1 (%)"
    from trainer.methods import title as method_name
    assert method_name("expert+teacher") == "expert (teacher labels)"


def test_fig5_heatmap_is_the_csv(measured):
    tmp_path, shards, results = measured
    out = run_report(tmp_path, shards, results)
    png_ok(out / "fig5_resnet50.png")
    rows = [r for r in read_csv(out / "fig5_cross_eval.csv") if r["arch"] == "resnet50"]
    by = {r["trained_on"]: r for r in rows}
    assert list(by)[0] == "pretrained"
    assert num(by["expert: jpeg-10"]["bpg-41"]) == 60.0 and num(by["expert: jpeg-10"]["jpeg-75"]) == 74.0
    assert by["expert: jpeg-10"]["j2k-200"] == ""          # never evaluated there
    assert num(by["pretrained"]["j2k-200"]) == 14.5
    assert num(by["expert (teacher labels): bpg-41"]["bpg-41"]) == 69.0

    ce = report.cross_eval(load_results(results), load_manifests(shards), "resnet50")
    fig = report.plot_cross_eval(ce, tmp_path / "again.png")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (len(rows), len(ce.columns))
    for i, r in enumerate(rows):
        for j, s in enumerate(ce.columns):
            cell = num(r[s])
            assert (cell is None and bool(image.mask[i, j])) or math.isclose(float(image[i, j]), cell)


def test_trainer_eval_row_details(tmp_path, capsys):
    """Rows as trainer.evaluation writes them: null top-1 (unlabelled images) is skipped, PSNR/SSIM
    recorded in the row fill in for a missing manifest, several splits are not mixed."""
    rows = [dict(row("pretrained", None, "jpeg-10", 49.6), mean_psnr=25.3, mean_ssim=0.74, split="val"),
            dict(row("expert", "jpeg-10", "jpeg-10", None), split="val"),
            dict(row("expert", "jpeg-10", "jpeg-10", 99.0), split="train"),
            dict(row("expert", "jpeg-10,jpeg-75", "jpeg-10", 68.0), split="val")]  # multi-setting model
    results = tmp_path / "results.json"
    results.write_text(json.dumps(rows))
    assert [r.top1 for r in load_results(results)] == [49.6, 99.0, 68.0]
    out = run_report(tmp_path, tmp_path / "no-shards", results)
    assert "results of split(s) train left out" in capsys.readouterr().err
    (jpeg10,) = [r for r in read_csv(out / "table1.csv") if r["setting"] == "jpeg-10"]
    assert num(jpeg10["psnr"]) == 25.3 and num(jpeg10["ssim"]) == 0.74 and num(jpeg10["bytes"]) == 3018.0
    assert jpeg10["top1_expert"] == ""  # neither the train-split row nor the multi-setting model
    fig5 = {r["trained_on"]: r for r in read_csv(out / "fig5_cross_eval.csv")}
    assert num(fig5["jpeg-10,jpeg-75"]["jpeg-10"]) == 68.0


def test_one_trained_setting_is_followed_over_every_setting(tmp_path):
    """The demo's case: each method trained on j2k-200 only and evaluated everywhere.  Its
    curves follow that model over every setting (where training on one setting helps the
    others), lossless included as the reference; the Markdown table holds the same points."""
    rows = [row("pretrained", None, s, top1) for s, top1 in
            (("lossless", 100.0), ("jpeg-75", 74.0), ("jpeg-10", 45.0), ("j2k-200", 10.0), ("bpg-41", 50.0))]
    trained = {"finetune": (71.0, 69.0, 62.0, 47.0, 64.0), "expert": (72.0, 69.5, 61.5, 45.0, 64.5)}
    for method, tops in trained.items():
        rows += [row(method, "j2k-200", s, t, labels="teacher")
                 for s, t in zip(("lossless", "jpeg-75", "jpeg-10", "j2k-200", "bpg-41"), tops)]
    shards, results = tmp_path / "shards", tmp_path / "results.json"
    write_manifests(shards)
    results.write_text(json.dumps(rows))
    out = run_report(tmp_path, shards, results, "--caption", "top-1 = agreement")
    fig4 = read_csv(out / "fig4_rate_accuracy.csv")
    expert = [r for r in fig4 if r["method"] == "expert (teacher labels)"]
    assert sorted(r["setting"] for r in expert) == sorted(SETTINGS)
    assert {r["trained_on"] for r in expert} == {"j2k-200"}
    assert {r["curve"] for r in expert if r["codec"] == "jpeg"} == {
        "jpeg · expert (teacher labels), trained on j2k-200"}
    assert [num(r["top1"]) for r in expert if r["codec"] == "jpeg"] == [61.5, 69.5]   # by rate

    md = (out / "fig4_rate_accuracy.md").read_text()
    assert "| setting | bytes/image | bpp | PSNR (dB) | SSIM | pretrained top-1 | fine-tune (teacher labels) top-1 " \
           "(trained on j2k-200) | expert (teacher labels) top-1 (trained on j2k-200) | expert − fine-tune " \
           "(teacher labels) |" in md
    assert "| jpeg-10 | 3018 | 0.481 | 25.27 | 0.738 | 45.00 | 62.00 | 61.50 | -0.50 |" in md
    assert "| lossless | 68000 | 10.842 | ∞ | 1.000 | 100.00 | 71.00 | 72.00 | 1.00 |" in md
    # Table 1 keeps the paper's meaning: a trained model only on the setting it was trained on
    t1 = {r["setting"]: r for r in read_csv(out / "table1.csv")}
    assert t1["jpeg-10"]["top1_expert+teacher"] == "" and num(t1["j2k-200"]["top1_expert+teacher"]) == 45.0
    # Fig. 5: one row per model, every setting
    f5 = {r["trained_on"]: r for r in read_csv(out / "fig5_cross_eval.csv")}
    assert num(f5["expert (teacher labels): j2k-200"]["bpg-41"]) == 64.5
