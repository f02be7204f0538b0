"""Class groups in trainer.eval (issue 13): one pass gives the scores of named class subsets,
equal to evaluating shards built from those classes alone."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import make_image_folder
from trainer import EvalConfig, evaluate, loop
from trainer.groups import GroupError, normalise, parse_group, read_classes_file, resolve


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[: x.shape[0]]


def test_loop_scores_each_group_over_its_own_samples_and_classes():
    # 5 samples of a 6-way model; group A = classes {0, 1}, group B = {3, 4}
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 9.0],   # y=0: 1000-way wrong (5), A-way right (0)
                           [0.0, 9.0, 0.0, 0.0, 0.0, 0.0],   # y=1: right
                           [0.0, 5.0, 0.0, 9.0, 0.0, 0.0],   # y=3: right both ways
                           [0.0, 0.0, 9.0, 1.0, 2.0, 0.0],   # y=4: 1000-way wrong (2), B-way right (4)
                           [9.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # y=2: in no group
    batch = {"comp": torch.zeros(5, 3, 4, 4, dtype=torch.uint8), "label": torch.tensor([0, 1, 3, 4, 2])}
    step = loop.Step(device=torch.device("cpu"))
    r = loop.evaluate(Fixed(logits), [batch], step, groups={"A": [0, 1], "B": [3, 4]})
    a, b = r["groups"]["A"], r["groups"]["B"]
    assert (a["labelled"], a["top1"], a["top1_present"]) == (2, 50.0, 100.0)
    assert (b["labelled"], b["top1"], b["top1_present"]) == (2, 50.0, 100.0)
    assert r["labelled"] == 5 and r["top1"] == 40.0          # the whole set is unchanged by the groups
    assert math.isclose(a["loss"], float(torch.nn.functional.cross_entropy(logits[:2], torch.tensor([0, 1]))),
                        rel_tol=1e-6)
    assert "groups" not in loop.evaluate(Fixed(logits), [batch], step)


def test_loop_group_without_samples_scores_nothing():
    batch = {"comp": torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "label": torch.tensor([0])}
    r = loop.evaluate(Fixed(torch.eye(3)[:1]), [batch], loop.Step(), groups={"B": [2]})
    assert r["groups"]["B"]["labelled"] == 0 and math.isnan(r["groups"]["B"]["top1"])


def test_parse_and_files(tmp_path):
    assert parse_group("A=n01440764, n02102040") == ("A", ["n01440764", "n02102040"])
    assert parse_group("held-out: 0 217") == ("held-out", ["0", "217"])
    for bad in ("A", "A=", "a b=1", "A=1,1"):
        with pytest.raises(GroupError):
            parse_group(bad)
    named = tmp_path / "groups.txt"
    named.write_text("# the split\nA=n01440764,n02102040\nB: n02979186 n03000684  # held out\n")
    assert read_classes_file(named) == {"A": ["n01440764", "n02102040"], "B": ["n02979186", "n03000684"]}
    plain = tmp_path / "held_out.txt"
    plain.write_text("n02979186\nn03000684\n")
    assert read_classes_file(plain) == {"held_out": ["n02979186", "n03000684"]}
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("A=n01440764\nn03000684\n")
    with pytest.raises(GroupError, match="mixes"):
        read_classes_file(mixed)
    with pytest.raises(GroupError, match="defined twice"):
        normalise(["A=1"], [named])
    assert normalise({"C": "5"}, [plain]) == {"C": ["5"], "held_out": ["n02979186", "n03000684"]}


def test_resolve_folder_names_wnids_and_indices():
    index = {"n01440764": 0, "n02102040": 217}
    assert resolve({"A": ["n02102040", "n01440764"], "B": ["482", "n03000684"]}, index, 1000, "val/x") == \
        {"A": [0, 217], "B": [482, 491]}
    # folder-order label space: folder names only, a wnid is not an ImageNet index there
    with pytest.raises(GroupError, match="'n03000684' is not a class of val/y"):
        resolve({"A": ["n03000684"]}, {"cat": 0, "dog": 1}, 2, "val/y")
    assert resolve({"A": ["dog", "0"]}, {"cat": 0, "dog": 1}, 2, "val/y") == {"A": [0, 1]}
    with pytest.raises(GroupError, match="same class"):
        resolve({"A": ["cat", "0"]}, {"cat": 0, "dog": 1}, 2, "val/y")
    with pytest.raises(GroupError, match="indices go up to 1"):
        resolve({"A": ["7"]}, {"cat": 0, "dog": 1}, 2, "val/y")


CLASSES = ("cat", "dog", "fox", "owl")   # not wnids: folder order, labels 0..3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The same images as one 4-class folder and as two 2-class folders (groups A and B)."""
    from pipeline.build import build

    root = tmp_path_factory.mktemp("groups")
    make_image_folder(root / "all", classes=CLASSES, per_class=3, size=(240, 232), split="val", seed=7)
    for name, classes in (("A", CLASSES[:2]), ("B", CLASSES[2:])):
        for c in classes:
            (root / name / "val").mkdir(parents=True, exist_ok=True)
            (root / name / "val" / c).symlink_to(root / "all" / "val" / c)
    # the label space of the 2-class folders must stay the 4-class one: a classes file says so
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for name in ("all", "A", "B"):
        build(root / name, "val", ["jpeg-10"], root / "shards" / name, jobs=1, progress=False,
              classes_file=root / "classes.txt")
    torch.manual_seed(3)
    from trainer.models import build_model
    torch.save(build_model("mobilenet_v3_small", None, 4).net.state_dict(), root / "w.pth")
    return root


def _eval(root, shards, out, **kw):
    return evaluate(EvalConfig(arch="mobilenet_v3_small", weights=[str(root / "w.pth")], num_classes=4,
                               shards=[str(root / "shards" / shards / "val" / "jpeg-10")], out=str(out),
                               workers=0, device="cpu", progress=False, **kw))


@pytest.mark.slow
def test_group_rows_equal_the_scores_of_separate_shards(shards, tmp_path):
    rows = _eval(shards, "all", tmp_path / "r.json", groups={"A": ["cat", "dog"], "B": ["2", "owl"]})
    by = {r["group"]: r for r in rows}
    assert set(by) == {None, "A", "B"}
    assert by[None]["count"] == 12 and by["A"]["count"] == by["B"]["count"] == 6
    assert by["A"]["group_classes"] == [0, 1] and by["B"]["group_classes"] == [2, 3]
    assert by["A"]["expected"] is None and by["A"]["skipped"] == by[None]["skipped"] == 0
    for g in ("A", "B"):
        alone = _eval(shards, g, tmp_path / f"{g}.json")[0]   # the reference: a folder of g's classes only
        assert alone["count"] == by[g]["count"]
        assert by[g]["top1"] == pytest.approx(alone["top1"])
        assert by[g]["top5"] == pytest.approx(alone["top5"])
        assert by[g]["top1_present"] == pytest.approx(alone["top1_present"])   # arg-max over g's 2 classes
        assert by[g]["loss"] == pytest.approx(alone["loss"], rel=1e-5)
    # the whole-setting row is what an evaluation without groups gives
    plain = _eval(shards, "all", tmp_path / "plain.json")[0]
    assert {k: plain[k] for k in ("top1", "top5", "count")} == {k: by[None][k] for k in ("top1", "top5", "count")}
    # a second evaluation replaces its rows instead of adding more
    _eval(shards, "all", tmp_path / "r.json", groups={"A": ["cat", "dog"], "B": ["2", "owl"]})
    assert len(json.loads((tmp_path / "r.json").read_text())) == 3


@pytest.mark.slow
def test_cli_groups_from_options_and_files(shards, tmp_path, capsys):
    from trainer.eval import main
    groups = tmp_path / "split.txt"
    groups.write_text("A=cat,dog\nB=fox,owl\n")
    base = ["--arch", "mobilenet_v3_small", "--weights", str(shards / "w.pth"), "--num-classes", "4",
            "--shards", str(shards / "shards" / "all" / "val" / "jpeg-10"), "--workers", "0", "--device", "cpu",
            "--no-progress"]
    assert main(base + ["--classes", str(groups), "--out", str(tmp_path / "f.json")]) == 0
    assert main(base + ["--group", "A=cat,dog", "B=fox,owl", "--out", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    assert "jpeg-10 [A]" in out and "jpeg-10 [B]" in out
    strip = lambda rows: [{k: v for k, v in r.items() if k != "checkpoint"} for r in rows]  # noqa: E731
    assert strip(json.loads((tmp_path / "f.json").read_text())) == strip(json.loads((tmp_path / "g.json").read_text()))
    # bad groups are one line each, before any model runs
    for bad, msg in ((["--group", "A=cat,zebra"], "'zebra' is not a class of"),
                     (["--group", "A"], "write NAME=CLASS"),
                     (["--group", "A=cat", "--group", "A=dog"], "defined twice"),
                     (["--classes", str(tmp_path / "none.txt")], "no such file")):
        assert main(base + bad + ["--out", str(tmp_path / "bad.json")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad.json").exists()
