"""WebP, AVIF and JPEG XL downstream of the pipeline: the receiver recognises them by content,
and Fig. 4 draws a panel with a line per method for each of them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.codecs import create
from receiver import core
from tests.conftest import synthetic_rgb
from trainer.reports import report
from trainer.reports.results import load_manifests, load_results

NEW = {"webp": ("webp-8", 8, 2022.0), "avif": ("avif-26", 26, 1995.0), "jxl": ("jxl-14", 14, 2010.0)}


@pytest.mark.parametrize("codec", list(NEW))
def test_receiver_recognises_new_formats_by_content(tmp_path, codec):
    if codec == "jxl":
        pytest.importorskip("imagecodecs", reason="codec jxl needs the optional extra: pip install '.[jxl]'")
    rgb = synthetic_rgb(224, 224)
    data = create(codec, 40).encode(rgb)
    f = tmp_path / "received.jpg"       # a misleading extension on purpose
    f.write_bytes(data)
    pixels, pred = core.read_input(f)
    assert pred.codec == codec and pred.bytes == len(data) and pred.received_size == [224, 224]
    assert not pred.cropped
    np.testing.assert_array_equal(pixels, create(codec, 40).decode(data))


def _manifest(shards, setting, codec, q, nbytes):
    d = shards / "val" / setting
    d.mkdir(parents=True, exist_ok=True)
    stats = {"bytes": nbytes, "bpp": nbytes * 8 / 224 ** 2, "psnr": 25.0, "ssim": 0.7}
    (d / "manifest.json").write_text(json.dumps({
        "codec": codec, "q": q, "setting": setting, "split": "val", "count": 4, "mean": stats, "median": stats,
        "shards": [{"name": "shard-000000.tar", "count": 4}], "classes": ["n01440764"], "num_classes": 1000,
        "failed": []}))


def _row(method, setting, top1, trained_on=None):
    codec = setting.split("-")[0]
    return {"checkpoint": None if method == "pretrained" else f"runs/{method}-{trained_on}/best.pth",
            "weights": "IMAGENET1K_V1", "arch": "resnet50", "method": method, "trained_on": trained_on,
            "setting": setting, "codec": codec, "q": None, "top1": top1, "top5": None, "count": 4,
            "labels": "dataset"}


def test_fig4_draws_a_panel_per_new_codec(tmp_path):
    shards, results = tmp_path / "shards", tmp_path / "results.json"
    _manifest(shards, "lossless", "lossless", None, 68000.0)
    _manifest(shards, "j2k-200", "j2k", 200, 761.0)
    rows = [_row("pretrained", "lossless", 75.0), _row("pretrained", "j2k-200", 15.0)]
    for i, (codec, (setting, q, nbytes)) in enumerate(NEW.items()):
        _manifest(shards, setting, codec, q, nbytes)
        rows += [_row("pretrained", setting, 50.0 + i), _row("expert", setting, 60.0 + i, trained_on=setting)]
    results.write_text(json.dumps(rows))
    series = report.rate_accuracy_series(load_results(results), load_manifests(shards), "resnet50", "bytes")
    fig = report.plot_rate_accuracy(series, tmp_path / "fig4.png", "bytes")
    titles = [ax.get_title() for ax in fig.axes]
    # one panel per codec, titled and ordered as the codec registry declares (lossless: no curve)
    assert titles == ["JPEG 2000", "WebP", "AVIF", "JPEG XL"]
    for codec, (setting, _, nbytes) in NEW.items():
        ax = fig.axes[titles.index({"webp": "WebP", "avif": "AVIF", "jxl": "JPEG XL"}[codec])]
        curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                  for line in ax.get_lines() if line.get_gid() == "curve"}
        assert len(curves) == 2, curves                       # pretrained and expert
        i = list(NEW).index(codec)
        assert sorted(curves.values()) == [([nbytes], [50.0 + i]), ([nbytes], [60.0 + i])]
        assert setting in {t.get_text() for t in ax.texts}
    assert (tmp_path / "fig4.png").stat().st_size > 1000
