"""trainer.reports.recommend on a hand-made set of (bytes, top-1) points with known answers."""
from __future__ import annotations

import json

import pytest

from trainer.reports import recommend
from trainer.reports.recommend import Option, choose, interpolate, pareto_front


def row(setting, top1, nbytes, method="expert", trained_on="same", arch="resnet50", labels="dataset"):
    codec, _, q = setting.rpartition("-")
    return {"checkpoint": f"runs/{setting}-{method}/best.pth" if method != "pretrained" else None,
            "weights": "IMAGENET1K_V1", "arch": arch, "method": method,
            "trained_on": None if method == "pretrained" else (setting if trained_on == "same" else trained_on),
            "setting": setting, "codec": codec, "q": int(q), "top1": top1, "top5": 90.0, "count": 10,
            "mean_bytes": nbytes, "mean_bpp": nbytes * 8 / 224 ** 2, "labels": labels,
            "selected_on_scored_data": False}


# front: A(500, 30) B(800, 50) E(2000, 70) H(10000, 75); dominated: C, D, G, P
POINTS = [
    row("bpg-51", 30.0, 500.0),                       # A
    row("j2k-200", 50.0, 800.0),                      # B
    row("j2k-200", 45.0, 800.0, method="finetune"),   # C: same rate, lower top-1
    row("bpg-46", 40.0, 1000.0),                      # D: dearer and worse than B
    row("jpeg-10", 70.0, 2000.0),                     # E
    row("jpeg-30", 65.0, 5000.0),                     # G: dearer and worse than E
    row("jpeg-75", 75.0, 10000.0),                    # H
    row("jpeg-75", 60.0, 10000.0, method="pretrained"),  # P
]
FRONT = [("bpg-51", 30.0), ("j2k-200", 50.0), ("jpeg-10", 70.0), ("jpeg-75", 75.0)]


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(POINTS))
    return path


def run_json(results, *args, capsys):
    rc = recommend.main(["--results", str(results), "--json", *args])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out), captured.err


def test_pareto_front_drops_dominated(results, capsys):
    rc, out, _ = run_json(results, capsys=capsys)
    assert rc == 0
    assert [(o["setting"], o["top1"]) for o in out["front"]] == FRONT
    assert out["choice"] is None  # no budget: just the front


def test_pareto_front_function_keeps_ties_and_sorts():
    def opt(b, t, s):
        return Option("a", "expert", s, s, "jpeg", 1, t, b, b / 100)
    pts = [opt(3, 9, "x"), opt(1, 5, "y"), opt(2, 5, "dominated"), opt(3, 9, "tie"), opt(4, 8, "worse")]
    assert [o.setting for o in pareto_front(pts)] == ["y", "tie", "x"]


@pytest.mark.parametrize("budget, expected", [(900, ("j2k-200", 50.0)), (2000, ("jpeg-10", 70.0)),
                                              (1e9, ("jpeg-75", 75.0)), (500, ("bpg-51", 30.0))])
def test_best_under_budget(results, capsys, budget, expected):
    rc, out, _ = run_json(results, "--budget", str(budget), capsys=capsys)
    assert rc == 0 and (out["choice"]["setting"], out["choice"]["top1"]) == expected
    assert out["choice"]["bytes"] <= budget and out["choice"]["interpolated"] is False


def test_budget_refusal_names_smallest_rate(results, capsys):
    rc = recommend.main(["--results", str(results), "--budget", "400"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "nothing measured fits 400 bytes/image" in err and "smallest measured rate is 500 bytes/image" in err


def test_min_top1(results, capsys):
    rc, out, _ = run_json(results, "--min-top1", "60", capsys=capsys)
    assert rc == 0 and out["choice"]["setting"] == "jpeg-10"   # cheapest reaching 60 %
    rc = recommend.main(["--results", str(results), "--min-top1", "80"])
    assert rc == 1 and "best measured is 75.00 %" in capsys.readouterr().err
    rc = recommend.main(["--results", str(results), "--min-top1", "72", "--budget", "5000"])
    assert rc == 1 and "best within it is 70.00 %" in capsys.readouterr().err


def test_bpp_budget(results, capsys):
    rc, out, _ = run_json(results, "--bpp", str(900 * 8 / 224 ** 2), capsys=capsys)
    assert rc == 0 and out["x"] == "bpp" and out["choice"]["setting"] == "j2k-200"
    assert recommend.main(["--results", str(results), "--bpp", "1", "--budget", "1"]) == 2


def test_filters_and_human_output(results, capsys):
    rc = recommend.main(["--results", str(results), "--budget", "12000", "--method", "pretrained"])
    out = capsys.readouterr().out
    assert rc == 0 and "Best measured choice within 12000 bytes/image" in out
    assert "jpeg-75" in out and "pretrained" in out and "top-1 60.00 %" in out


def test_manifests_add_quality(tmp_path, results, capsys):
    d = tmp_path / "shards" / "val" / "jpeg-10"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({
        "codec": "jpeg", "q": 10, "setting": "jpeg-10", "split": "val", "count": 10,
        "mean": {"bytes": 2000.0, "bpp": 0.32, "psnr": 25.27, "ssim": 0.738}}))
    rc, out, _ = run_json(results, "--budget", "2000", "--manifests", str(tmp_path / "shards"), capsys=capsys)
    assert rc == 0 and out["choice"]["psnr"] == 25.27 and out["choice"]["ssim"] == 0.738


# --------------------------------------------------------------------------- interpolation

CURVES = [
    row("jpeg-10", 60.0, 1000.0), row("jpeg-30", 70.0, 2000.0),      # q grows with bytes
    row("bpg-51", 30.0, 1000 / 2 ** 0.5), row("bpg-42", 50.0, 2000 * 2 ** 0.5),  # q shrinks with bytes
    row("jpeg-30", 50.0, 2000.0, trained_on="jpeg-10"),              # cross-setting: not a curve point
]


def test_interpolation_is_marked_and_never_chosen(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(CURVES))
    budget = 1000 * 2 ** 0.5                                           # halfway in log(bytes)
    rc, out, _ = run_json(path, "--budget", str(budget), "--interpolate", capsys=capsys)
    assert rc == 0
    assert out["choice"]["setting"] == "jpeg-10" and out["choice"]["interpolated"] is False
    assert all(not o["interpolated"] for o in out["front"])
    est = {o["codec"]: o for o in out["interpolated"]}
    assert est["jpeg"]["interpolated"] is True and est["jpeg"]["between"] == ["jpeg-10", "jpeg-30"]
    assert est["jpeg"]["top1"] == pytest.approx(65.0)
    assert est["jpeg"]["q"] == 20 and est["jpeg"]["setting"] == "jpeg-20"
    assert est["jpeg"]["bytes"] == pytest.approx(budget)
    # bpg: the budget is halfway too; q 51 -> 42 gives 46.5, rounded up (a coarser quantiser,
    # so fewer bytes) to keep the real rate within the budget
    assert est["bpg"]["top1"] == pytest.approx(40.0) and est["bpg"]["q"] == 47
    text_rc = recommend.main(["--results", str(path), "--budget", str(budget), "--interpolate"])
    text = capsys.readouterr().out
    assert text_rc == 0 and "INTERPOLATED (not measured, not a real setting yet): jpeg q≈20" in text


def test_interpolation_outside_measured_range_gives_nothing():
    opts = recommend.options_from([], {})
    assert interpolate(opts, budget=1000) == []
    a = Option("r", "expert", "jpeg-10", "jpeg-10", "jpeg", 10, 60.0, 1000.0, 0.16)
    b = Option("r", "expert", "jpeg-30", "jpeg-30", "jpeg", 30, 70.0, 2000.0, 0.32)
    assert interpolate([a, b], budget=900) == [] and interpolate([a, b], budget=2500) == []
    assert choose([a, b], budget=900) is None


def test_interpolation_for_min_top1(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(CURVES[:2]))
    rc, out, _ = run_json(path, "--min-top1", "65", "--interpolate", capsys=capsys)
    assert rc == 0 and out["choice"]["setting"] == "jpeg-30"
    (est,) = out["interpolated"]
    assert est["top1"] == pytest.approx(65.0) and est["bytes"] == pytest.approx(1000 * 2 ** 0.5)
    assert est["q"] == 20
