"""Numbers read from a results file (or a manifest) are checked where they are read: a row
that no evaluation can have written (a negative size, a top-1 of 1e308, 10**400 bytes) is one
line naming the file, the row and the field, never a recommendation nor an OverflowError."""
from __future__ import annotations

import json

import pytest

from tests.adversarial.conftest import one_error


def _row(**kw) -> dict:
    return {"arch": "resnet50", "method": "pretrained", "setting": "jpeg-10", "codec": "jpeg", "q": 10,
            "top1": 50.0, "top5": 70.0, "count": 10, "mean_bytes": 1200.0, "mean_bpp": 0.19, "split": "val",
            "selected_on_scored_data": False, **kw}


GOOD = [_row(), _row(setting="jpeg-75", q=75, top1=70.0, mean_bytes=5000.0, mean_bpp=0.8)]
BAD = {"negative bytes": {"mean_bytes": -5}, "huge top-1": {"top1": 1e308}, "10**400 bytes": {"mean_bytes": 10 ** 400},
       "top-1 over 100": {"top1": 101.0}, "negative bpp": {"mean_bpp": -0.1}, "ssim of 3": {"mean_ssim": 3.0},
       "fractional count": {"count": 2.5}, "huge count": {"count": 10 ** 400}, "text top-5": {"top5": "high"},
       "negative top-1": {"top1": -1.0}}


@pytest.mark.parametrize("name", sorted(BAD))
def test_recommend_refuses_an_absurd_number(tmp_path, capsys, name):
    from trainer.reports import recommend
    p = tmp_path / "results.json"
    # json.dumps writes 10**400 as digits, as a hostile file would
    p.write_text(json.dumps(GOOD + [_row(setting="jpeg-50", q=50, **BAD[name])]))
    assert recommend.main(["--results", str(p), "--budget", "100000"]) == 1
    line = one_error(capsys.readouterr().err)
    field = next(iter(BAD[name]))
    assert str(p) in line and "row 2" in line and field in line


def test_sane_rows_are_still_recommended(tmp_path, capsys):
    from trainer.reports import recommend
    p = tmp_path / "results.json"
    p.write_text(json.dumps(GOOD))
    assert recommend.main(["--results", str(p), "--budget", "3000"]) == 0
    assert "jpeg-10" in capsys.readouterr().out


def test_report_refuses_them_too(tmp_path, capsys):
    from trainer.reports.results import ResultsError, load_results
    p = tmp_path / "results.json"
    p.write_text(json.dumps(GOOD + [_row(mean_bytes=-5)]))
    with pytest.raises(ResultsError, match="mean_bytes -5 is not a number in"):
        load_results(p)


def test_a_manifest_mean_no_image_can_have(tmp_path):
    from pipeline.manifest import Manifest, ManifestError
    m = Manifest.from_dict({"setting": "jpeg-10", "codec": "jpeg", "q": 10, "count": 3,
                            "mean": {"bytes": 10 ** 400, "bpp": -1, "psnr": 30.0, "ssim": 0.9}})
    assert m.mean("psnr") == 30.0
    for metric in ("bytes", "bpp"):
        with pytest.raises(ManifestError, match=f"mean {metric}"):
            m.mean(metric)
