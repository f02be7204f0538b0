"""Calibrated routing: the table's bins, its choice per cell (best calibration top-1, ties to the
default, then the cheaper model), the file read back and checked against a zoo, and answers
that name their cell."""
from __future__ import annotations

import json
import math

import pytest

from fixtures.synthetic import make_image_folder
from pipeline.codecs import Probe
from tests.zoo_helpers import ARCH, trained_on_entry, write_expert
from trainer.selection import SelectionLeak

CLASSES = ("n01440764", "n02102040", "n02979186")      # ImageNet indices 0, 217, 482
SETTINGS = ["jpeg-10", "jpeg-75", "j2k-200", "lossless"]


# --------------------------------------------------------------------------- units

def test_bins_at_geometric_means_with_an_above_cell():
    from receiver import routing_table as rt
    got = rt.bins("jpeg", [0.4, 0.1], [0.1, 0.4, 2.5])
    assert [k for *_, k in got] == [rt.RATE, rt.RATE, rt.ABOVE]
    assert got[0][0] == 0 and got[0][1] == pytest.approx(0.2)
    assert got[1][1] == pytest.approx(1.0) and got[2] == (pytest.approx(1.0), math.inf, rt.ABOVE)
    assert rt.bins("lossless", [], [12.0]) == [(0.0, math.inf, rt.LOSSLESS_CELL)]
    assert rt.bins("bpg", [], [0.2]) == [(0.0, math.inf, rt.ALL)]
    assert rt.bins("j2k", [0.12], [0.06, 0.12]) == [(0.0, math.inf, rt.RATE)]   # nothing calibrated above


def test_choice_best_then_default_then_cheaper():
    from receiver import routing_table as rt
    cost = {"a": 10, "b": 5, "default": 99}
    assert rt.choose({"a": (8, 10), "b": (7, 10), "default": (6, 10)}, cost) == "a"
    assert rt.choose({"a": (8, 10), "b": (8, 10), "default": (8, 10)}, cost) == "default"
    assert rt.choose({"a": (8, 10), "b": (8, 10), "default": (2, 10)}, cost) == "b"
    assert rt.choose({"a": (0, 0), "b": (0, 0)}, cost) is None


# --------------------------------------------------------------------------- a tiny zoo, end to end

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from pipeline.build import build
    from trainer.models import build_model

    root = tmp_path_factory.mktemp("calib")
    make_image_folder(root / "src", classes=CLASSES, per_class=3, split="select")
    make_image_folder(root / "src", classes=CLASSES, per_class=2, split="val", seed=100)
    shards = root / "shards"
    m = build(root / "src", "select", SETTINGS, shards, shard_size=5, jobs=1, progress=False, layout="split")
    build(root / "src", "val", ["jpeg-10", "lossless"], shards, shard_size=5, jobs=1, progress=False, layout="split")
    runs = root / "runs"
    # the jpeg-10 specialist answers class 0 (a third right), the j2k-200 one never a present class
    write_expert(runs / "jpeg-10", [trained_on_entry(m["jpeg-10"])], seed=0, num_classes=1000, favour=0)
    write_expert(runs / "j2k-200", [trained_on_entry(m["j2k-200"])], seed=1, num_classes=1000, favour=999)
    for name, favour in (("wrong", 999), ("tie", 0)):
        torch.manual_seed(3)
        pre = build_model(ARCH, None, 1000)
        head = [x for x in pre.modules() if isinstance(x, torch.nn.Linear)][-1]
        with torch.no_grad():
            head.bias[favour] += 100.0
        torch.save(pre.net.state_dict(), root / f"{name}.pth")
    return root, m


def _calibrate(world, out, default="wrong", *extra):
    from receiver import calibrate
    root, _ = world
    return calibrate.main(["--experts", str(root / "runs"), "--default", str(root / f"{default}.pth"),
                           "--arch", ARCH, "--calibration", str(root / "shards" / "select"), "--out", str(out),
                           "--device", "cpu", "--precision", "fp32", *extra])


def test_calibrate_writes_cells_and_picks_the_best(world, tmp_path, capsys):
    root, m = world
    assert _calibrate(world, tmp_path / "t.json") == 0, capsys.readouterr().err
    table = json.loads((tmp_path / "t.json").read_text())
    cells = {c["cell"]: c for c in table["cells"]}
    r10, r75 = m["jpeg-10"].mean("bpp"), m["jpeg-75"].mean("bpp")
    jpeg = [c for c in table["cells"] if c["codec"] == "jpeg"]
    assert [c["kind"] for c in jpeg] == ["rate", "above every expert"]
    assert jpeg[0]["hi"] == pytest.approx(math.sqrt(r10 * r75), rel=0.05)
    assert sum(c["images"] for c in table["cells"]) == 9 * len(SETTINGS) == table["calibration"]["images"]
    # the jpeg-10 specialist is right on a third of every cell, the others never
    for c in table["cells"]:
        assert c["model"].endswith("jpeg-10"), c
        assert c["top1"][c["model"]] == pytest.approx(1 / 3) and c["top1"]["default"] == 0
    assert set(cells) == {c["cell"] for c in table["cells"]}
    assert len(table["calibration"]["keys"]) == 9 and len(table["calibration"]["content_sha256"]) == 9 * 4


def test_a_tie_goes_to_the_default(world, tmp_path, capsys):
    assert _calibrate(world, tmp_path / "t.json", default="tie") == 0, capsys.readouterr().err
    table = json.loads((tmp_path / "t.json").read_text())
    assert {c["model"] for c in table["cells"]} == {"default"}


def test_predict_routes_by_the_table_and_names_the_cell(world, tmp_path, capsys):
    from receiver import predict
    from trainer.data.tarstream import tar_samples
    root, _ = world
    assert _calibrate(world, tmp_path / "t.json") == 0
    tar = sorted((root / "shards" / "val" / "jpeg-10").glob("shard-*.tar"))[0]
    sample = next(s for s in tar_samples(str(tar)) if "comp.jpg" in s)
    (tmp_path / "a.jpg").write_bytes(sample["comp.jpg"])
    capsys.readouterr()
    rc = predict.main(["--experts", str(root / "runs"), "--default", str(root / "wrong.pth"), "--arch", ARCH,
                       "--routing", str(tmp_path / "t.json"), "--device", "cpu", "--json", str(tmp_path / "a.jpg")])
    assert rc == 0
    [answer] = json.loads(capsys.readouterr().out)
    assert answer["expert"].endswith("jpeg-10")
    assert answer["route"].startswith("table cell jpeg [0, ") and "bpp: best calibration top-1" in answer["route"]


def test_without_a_table_the_fixed_rule(world):
    from receiver.zoo import load_zoo
    root, m = world
    zoo = load_zoo(root / "runs", str(root / "wrong.pth"), ARCH)
    _, route = zoo.choose(Probe("j2k", 224, 224, 700))
    assert route.cell is None and route.expert.endswith("j2k-200")


def _edited(src, dst, edit):
    table = json.loads(src.read_text())
    edit(table)
    dst.write_text(json.dumps(table))
    return dst


@pytest.mark.parametrize("case, expected", [
    ("missing model", "is not in the zoo"),
    ("unknown codec", "unknown codec 'mp3'"),
    ("overlapping bins", "overlap"),
    ("not a table", "not a routing table"),
    ("changed checkpoint", "not the checkpoint"),
    ("no default", "none is given (--default)"),
])
def test_bad_tables_are_one_line_at_start(world, tmp_path, capsys, case, expected):
    from receiver import predict
    from tests.adversarial.conftest import one_error
    root, _ = world
    assert _calibrate(world, tmp_path / "t.json") == 0
    t = tmp_path / "t.json"
    experts, default = str(root / "runs"), ["--default", str(root / "wrong.pth")]
    if case == "missing model":
        experts = str(root / "runs" / "j2k-200")
    elif case == "unknown codec":
        _edited(t, t, lambda d: d["cells"][0].update(codec="mp3"))
    elif case == "overlapping bins":
        _edited(t, t, lambda d: d["cells"].append({**next(c for c in d["cells"] if c["codec"] == "jpeg"),
                                                   "lo": 0.01, "hi": 0.02}))
    elif case == "not a table":
        t.write_text("[1, 2]")
    elif case == "changed checkpoint":
        _edited(t, t, lambda d: d["models"][next(k for k in d["models"] if k.endswith("jpeg-10"))]
                .update(sha256="0" * 64))
    elif case == "no default":
        default = []
    capsys.readouterr()
    rc = predict.main(["--experts", experts, *default, "--arch", ARCH, "--routing", str(t), "--device", "cpu",
                       str(tmp_path / "never-read.jpg")])
    assert rc == 1
    assert expected in one_error(capsys.readouterr().err)


def test_a_calibration_of_another_label_space_is_refused(world, tmp_path, capsys):
    from pipeline.build import build
    from receiver import calibrate
    from tests.adversarial.conftest import one_error
    root, _ = world
    make_image_folder(tmp_path / "src", classes=("cat", "dog"), per_class=2, split="select")
    build(tmp_path / "src", "select", ["jpeg-10"], tmp_path / "shards", shard_size=5, jobs=1, progress=False,
          layout="split")
    rc = calibrate.main(["--experts", str(root / "runs"), "--calibration", str(tmp_path / "shards" / "select"),
                         "--out", str(tmp_path / "t.json"), "--device", "cpu"])
    assert rc == 1
    assert "classes, but model" in one_error(capsys.readouterr().err)
    assert not (tmp_path / "t.json").exists()


def test_a_table_made_on_the_scored_images_is_refused(world, tmp_path):
    from receiver import calibrate, routing_table as rt
    root, _ = world
    assert _calibrate(world, tmp_path / "t.json") == 0
    table = rt.read(tmp_path / "t.json")
    select, _ = calibrate.read_shard_stream(root / "shards" / "select", ["jpeg-10"])
    assert all(r.crop for r in select) and table["calibration"]["crop_sha256"]
    with pytest.raises(SelectionLeak, match="9 image.s. chosen on are also scored"):
        rt.check_disjoint(table, calibrate.stream_ids(select))
    # the results' guard compares crops: the same photos under one setting only are found too
    table_jpeg = {**table, "calibration": {**table["calibration"], "crop_sha256": None}}
    with pytest.raises(rt.TableError, match="calibrated on 9 of the images being scored"):
        rt.check_disjoint(table_jpeg, calibrate.stream_ids(select))    # bitstream digests alone
    val, _ = calibrate.read_shard_stream(root / "shards" / "val")
    rt.check_disjoint(table, calibrate.stream_ids(val))      # other images: accepted


def test_the_same_photos_under_another_setting_are_a_leak(world, tmp_path):
    """Identity is the clean crop's, not the bitstream's: calibrating on the select split's
    jpeg-10 bitstreams and scoring its j2k bitstreams shares no byte string, but every photo."""
    from receiver import calibrate, routing_table as rt
    root, _ = world
    assert _calibrate(world, tmp_path / "t.json", "wrong", "--settings", "jpeg-10") == 0
    table = rt.read(tmp_path / "t.json")
    other = [s for s in SETTINGS if s not in ("jpeg-10", "lossless")][0]
    stream, _ = calibrate.read_shard_stream(root / "shards" / "select", [other])
    ids = calibrate.stream_ids(stream)
    assert not set(table["calibration"]["content_sha256"]) & ids["content_sha256"]
    with pytest.raises(SelectionLeak, match="chosen on are also scored"):
        rt.check_disjoint(table, ids)


def test_a_folder_of_received_files_calibrates(world, tmp_path, capsys):
    """A user's folder of class folders of bitstreams, labelled as the pipeline labels a source."""
    from receiver import calibrate
    from trainer.data.tarstream import tar_samples
    root, _ = world
    for tar in sorted((root / "shards" / "select" / "jpeg-10").glob("shard-*.tar")):
        for s in tar_samples(str(tar)):
            if "comp.jpg" in s:
                cls = {0: CLASSES[0], 217: CLASSES[1], 482: CLASSES[2]}[int(s["cls"])]
                (tmp_path / "files" / cls).mkdir(parents=True, exist_ok=True)
                (tmp_path / "files" / cls / f"{s['__key__'].replace('/', '_')}.jpg").write_bytes(s["comp.jpg"])
    rc = calibrate.main(["--experts", str(root / "runs"), "--default", str(root / "wrong.pth"), "--arch", ARCH,
                         "--calibration", str(tmp_path / "files"), "--out", str(tmp_path / "t.json"),
                         "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    table = json.loads((tmp_path / "t.json").read_text())
    [cell] = [c for c in table["cells"] if c["images"]]
    assert cell["codec"] == "jpeg" and cell["images"] == 9 and cell["top1"][cell["model"]] == pytest.approx(1 / 3)


def _table(**cell):
    base = {"codec": "jpeg", "lo": 0.0, "hi": 1.0, "kind": "rate", "model": "a", "images": 3}
    return {"format": "m2m-routing-table", "version": 1, "models": {"a": {}}, "calibration": {},
            "cells": [{**base, **cell}]}


@pytest.mark.parametrize("cell, expected", [
    ({"lo": float("inf")}, "finite rate"),
    ({"lo": float("nan")}, "finite rate"),
    ({"lo": -1}, "finite rate"),
    ({"hi": "2"}, "finite rate"),
    ({"lo": 2.0, "hi": 1.0}, "empty bin"),
    ({"lo": True}, "finite rate"),
    ({"codec": None}, "unknown codec"),
    ({"codec": "../etc"}, "unknown codec"),
    ({"kind": "anything"}, "kind must be"),
    ({"model": 7}, "model must be"),
    ({"model": "b"}, "do not list"),
])
def test_hostile_cells_are_refused(cell, expected):
    from receiver import routing_table as rt
    with pytest.raises(rt.TableError, match=expected):
        rt.parse(_table(**cell), "t.json")


def test_a_sound_cell_parses_and_routes():
    from receiver import routing_table as rt
    from receiver.route import Router
    table = rt.parse(_table(), "t.json")
    router = rt.TableRouter(table, Router([]), "t.json")
    assert router.route(Probe("jpeg", 224, 224, 3000)).expert == "a"            # 0.48 bpp: in [0, 1)
    assert router.route(Probe("jpeg", 224, 224, 30000)).expert == "default"     # 4.8 bpp: no cell, fixed rule
    assert router.route(Probe("jpeg", 224, 224, 30000)).reason.startswith("not in the routing table")


def test_calibrating_over_the_classes_present(world, tmp_path):
    """--metric top1_present chooses each cell on the arg-max over the calibration's own classes:
    a model is right there wherever it is right 1000-way, and the models that always answer class
    999 (absent) are right only there; the table says which metric it was made on."""
    from receiver import routing_table as rt
    assert _calibrate(world, tmp_path / "all.json") == 0
    assert _calibrate(world, tmp_path / "present.json", "wrong", "--metric", "top1_present") == 0
    every, present = rt.read(tmp_path / "all.json"), rt.read(tmp_path / "present.json")
    assert (every["metric"], present["metric"]) == ("top1", "top1_present")
    assert [c["cell"] for c in every["cells"]] == [c["cell"] for c in present["cells"]]
    for a, b in zip(every["cells"], present["cells"]):
        assert set(a["top1"]) == set(b["top1"])
        assert all(b["top1"][m] >= a["top1"][m] for m in a["top1"]), a["cell"]
        if b["top1"]:
            assert b["top1"][b["model"]] == max(b["top1"].values())
    assert sum(v for c in present["cells"] for v in c["top1"].values()) > \
        sum(v for c in every["cells"] for v in c["top1"].values())
