"""Class groups in trainer.evaluation: one pass gives the scores of named class subsets,
equal to torchvision + Pillow run over the same samples and to evaluating shards built from
those classes alone; bad groups are one-line user errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import ROOT, make_image_folder
from tests.test_trainer_present import Fixed   # a model that returns given logits
from trainer import EvalConfig, evaluate, loop
from trainer.groups import GroupError, normalise, parse_group, read_classes_file, resolve


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
ABSENT = ("bat", "cow", "elk", "yak")     # in the label space (indices 4..7), no images of them
OUTPUTS = len(CLASSES) + len(ABSENT)

# The logits the crafted model gives each sample (key order), so that its predictions are not the
# one constant class of a freshly initialised network: right, wrong inside a group, wrong outside
# it with the group's arg-max right, an absent class on top, the true class below the top 5 ...
#            cat dog fox owl bat cow elk yak
DESIGN = {"cat/cat_0000_JPEG": [8, 0, 0, 0, 0, 0, 0, 0],
          "cat/cat_0001_JPEG": [2, 8, 0, 0, 0, 0, 0, 0],
          "cat/cat_0002_JPEG": [6, 0, 0, 0, 8, 0, 0, 0],
          "dog/dog_0000_JPEG": [0, 8, 0, 0, 0, 0, 0, 0],
          "dog/dog_0001_JPEG": [4, 2, 8, 0, 0, 0, 0, 0],
          "dog/dog_0002_JPEG": [3, -4, 2, 1, 5, 4, 8, 0],
          "fox/fox_0000_JPEG": [0, 0, 8, 0, 0, 0, 0, 0],
          "fox/fox_0001_JPEG": [8, 0, 5, 2, 0, 0, 0, 0],
          "fox/fox_0002_JPEG": [0, 0, 2, 8, 0, 0, 0, 0],
          "owl/owl_0000_JPEG": [0, 0, 0, 8, 0, 0, 0, 0],
          "owl/owl_0001_JPEG": [0, 0, 0, 5, 0, 0, 0, 8],
          "owl/owl_0002_JPEG": [0, 8, 5, 3, 0, 0, 0, 0]}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # torchvision's documented values


def decoded_samples(folder):
    """{key: (uint8 HWC array of comp.*, label)} of a shard folder, read with tarfile and Pillow
    only (no trainer code); the label is the class folder of the key, checked against .cls."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    images, labels = {}, {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                if ext.startswith("comp."):
                    images[key] = np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"))
                elif ext == "cls":
                    labels[key] = int(tf.extractfile(m).read())
    assert images and sorted(images) == sorted(labels)
    for key, y in labels.items():
        assert y == CLASSES.index(key.split("/")[0]), key
    return {k: (images[k], labels[k]) for k in sorted(images)}


def reference_logits(weights, samples):
    """torchvision's mobilenet_v3_small with the saved weights over the decoded images, normalised
    here: the independent reference for trainer.evaluate."""
    import numpy as np
    import torchvision

    net = torchvision.models.mobilenet_v3_small(num_classes=OUTPUTS)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    x = torch.from_numpy(np.stack([a for a, _ in samples.values()])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return net(x), torch.tensor([y for _, y in samples.values()])


def crafted_weights(samples, path):
    """A mobilenet_v3_small whose logits on ``samples`` are DESIGN: batch-norm statistics of these
    images (so that the features differ between images), then the last layer fitted by least squares."""
    import numpy as np
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.mobilenet_v3_small(num_classes=OUTPUTS)
    x = torch.from_numpy(np.stack([a for a, _ in samples.values()])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None             # the running statistics become this batch's
    with torch.no_grad():
        net.train()(x)
        net.eval()
        h = net.classifier[:-1](torch.flatten(net.avgpool(net.features(x)), 1)).double()
        want = torch.tensor([DESIGN[k] for k in samples], dtype=torch.float64)
        mh, mw = h.mean(0), want.mean(0)
        w = torch.linalg.lstsq(h - mh, want - mw, driver="gelsd").solution
        net.classifier[-1].weight.copy_(w.T.float())
        net.classifier[-1].bias.copy_((mw - mh @ w).float())
    torch.save(net.state_dict(), path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The same images as one 4-class folder and as two 2-class folders (groups A and B), in an
    8-class label space (4 classes without images); w.pth: the crafted model of DESIGN."""
    from pipeline.build import build

    root = tmp_path_factory.mktemp("groups")
    make_image_folder(root / "all", classes=CLASSES, per_class=3, size=(240, 232), split="val", seed=7)
    for name, classes in (("A", CLASSES[:2]), ("B", CLASSES[2:])):
        for c in classes:
            (root / name / "val").mkdir(parents=True, exist_ok=True)
            (root / name / "val" / c).symlink_to(root / "all" / "val" / c)
    # the label space of the 2-class folders must stay the 8-class one: a classes file says so
    (root / "classes.txt").write_text("\n".join(CLASSES + ABSENT) + "\n")
    for name in ("all", "A", "B"):
        build(root / name, "val", ["jpeg-10"], root / "shards" / name, jobs=1, progress=False,
              classes_file=root / "classes.txt")
    crafted_weights(decoded_samples(root / "shards" / "all" / "val" / "jpeg-10"), root / "w.pth")
    return root


def _eval(root, shards, out, **kw):
    return evaluate(EvalConfig(arch="mobilenet_v3_small", weights=[str(root / "w.pth")], num_classes=OUTPUTS,
                               shards=[str(root / "shards" / shards / "val" / "jpeg-10")], out=str(out),
                               workers=0, device="cpu", precision="fp32", progress=False, **kw))


def test_group_rows_equal_an_independent_computation(shards, tmp_path):
    """Every group row of one pass (batches of 5 that cut across classes, overlapping groups, a
    group naming a class without images) against torchvision + Pillow over the same samples."""
    import torch.nn.functional as F

    samples = decoded_samples(shards / "shards" / "all" / "val" / "jpeg-10")
    logits, y = reference_logits(shards / "w.pth", samples)
    # the model behaves as designed, so the scores below are not those of a constant prediction
    assert logits.argmax(1).tolist() == [max(range(OUTPUTS), key=DESIGN[k].__getitem__) for k in samples]
    groups = {"A": ["cat", "dog"], "B": ["2", "owl"], "C": ["dog", "fox", "owl"], "D": ["owl", "7"]}
    ids = {"A": [0, 1], "B": [2, 3], "C": [1, 2, 3], "D": [3, 7]}
    rows = _eval(shards, "all", tmp_path / "r.json", groups=groups, batch_size=5)
    by = {r["group"]: r for r in rows}
    assert set(by) == {None, *groups}

    def scores(mask, classes):
        o, t = logits[mask], y[mask]
        cls = torch.tensor(classes)
        return {"count": int(mask.sum()), "top1": 100.0 * float((o.argmax(1) == t).double().mean()),
                "top5": 100.0 * float((o.topk(5, 1).indices == t[:, None]).any(1).double().mean()),
                "top1_present": 100.0 * float((cls[o[:, cls].argmax(1)] == t).double().mean()),
                "loss": float(F.cross_entropy(o, t))}

    want = {g: scores(torch.isin(y, torch.tensor(c)), c) for g, c in ids.items()}
    want[None] = scores(torch.ones_like(y, dtype=torch.bool), [0, 1, 2, 3])   # present: the 4 with images
    # the design gives these (a check that the reference itself is what the test means)
    assert [want[g]["count"] for g in ("A", "B", "C", "D")] == [6, 6, 9, 3]
    assert (want["A"]["top1"], want["A"]["top1_present"]) == pytest.approx((200 / 6, 300 / 6))
    assert (want["D"]["top1"], want["D"]["top1_present"]) == pytest.approx((100 / 3, 200 / 3))
    for g, w in want.items():
        got = by[g]
        assert got["count"] == w["count"], g
        assert got["group_classes"] == (ids[g] if g else None)
        for k in ("top1", "top5", "top1_present"):
            assert got[k] == pytest.approx(w[k], abs=1e-9), (g, k)
        assert got["loss"] == pytest.approx(w["loss"], rel=1e-4), g
    assert all(by[g]["labelled"] == by[g]["count"] and by[g]["expected"] is None for g in groups)
    assert by[None]["expected"] == 12
    written = {r["group"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert {g: (r["count"], r["top1"]) for g, r in written.items()} == \
        {g: (r["count"], r["top1"]) for g, r in by.items()}


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
    from trainer.evaluation import main
    groups = tmp_path / "split.txt"
    groups.write_text("A=cat,dog\nB=fox,owl\n")
    base = ["--arch", "mobilenet_v3_small", "--weights", str(shards / "w.pth"), "--num-classes", str(OUTPUTS),
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


def _files(tmp_path):
    """--classes files, each wrong in one way (and one good one to clash with)."""
    texts = {"good.txt": "A=dog\n", "unknown.txt": "A=cat\nB=fox,zebra\n", "empty_group.txt": "A=cat\nB=\n",
             "twice.txt": "A=cat\nA=dog\n", "mixed.txt": "A=cat,dog\nfox\n", "comments.txt": "# nothing\n\n",
             "bad_name.txt": "a b=cat\n"}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00A=cat\x00")
    (tmp_path / "adir.txt").mkdir()
    return tmp_path


BAD_GROUPS = {   # id: (arguments, what the one line must say besides the input's name)
    "unknown class": (["--group", "A=cat,zebra"], "group 'A': 'zebra' is not a class of {shards}"),
    "unknown class in a file": (["--classes", "{d}/unknown.txt"], "group 'B': 'zebra' is not a class of {shards}"),
    "no =": (["--group", "A"], "--group 'A': write NAME=CLASS"),
    "empty group": (["--group", "A="], "--group: group 'A' names no classes"),
    "empty group in a file": (["--classes", "{d}/empty_group.txt"],
                              "--classes {d}/empty_group.txt: group 'B' names no classes"),
    "class twice": (["--group", "A=cat,dog,cat"], "--group: group 'A' lists cat twice"),
    "bad name": (["--group", "a b=cat"], "--group: group name 'a b' must be"),
    "bad name in a file": (["--classes", "{d}/bad_name.txt"], "--classes {d}/bad_name.txt: group name 'a b' must be"),
    "name twice": (["--group", "A=cat", "--group", "A=dog"], "group 'A' is defined twice"),
    "name twice, option and file": (["--group", "A=cat", "--classes", "{d}/good.txt"], "group 'A' is defined twice"),
    "name twice in a file": (["--classes", "{d}/twice.txt"], "--classes {d}/twice.txt: group 'A' is defined twice"),
    "missing file": (["--classes", "{d}/none.txt"], "--classes {d}/none.txt: no such file"),
    "directory": (["--classes", "{d}/adir.txt"], "--classes {d}/adir.txt: not a readable text file"),
    "binary file": (["--classes", "{d}/binary.txt"], "--classes {d}/binary.txt: not a readable text file"),
    "no classes": (["--classes", "{d}/comments.txt"], "--classes {d}/comments.txt: no classes in it"),
    "mixed forms": (["--classes", "{d}/mixed.txt"], "--classes {d}/mixed.txt: mixes NAME=... lines"),
}


@pytest.mark.parametrize("case", list(BAD_GROUPS))
def test_cli_bad_groups_are_one_line_user_errors(shards, tmp_path, capsys, case):
    """Exit status 1 (a user error, trainer/clitools.py; 2 is click's usage errors), one line on
    stderr naming the input and the reason, no traceback, no results file, no model run."""
    from trainer.evaluation import main
    d = _files(tmp_path)
    where = shards / "shards" / "all" / "val" / "jpeg-10"
    args, msg = BAD_GROUPS[case]
    fill = lambda t: t.format(d=d, shards=where)   # noqa: E731
    argv = ["--arch", "mobilenet_v3_small", "--weights", str(tmp_path / "no-weights.pth"), "--shards", str(where),
            "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "bad.json"),
            *map(fill, args)]
    # the weights file does not exist: a group error must come before any model is loaded
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fill(msg) in err, err
    assert "no-weights.pth" not in err and not (tmp_path / "bad.json").exists()


def test_cli_bad_group_as_a_process_prints_no_traceback(shards, tmp_path):
    """The console entry point end to end: exit status 1, one stderr line, no traceback."""
    import os
    import subprocess
    import sys

    where = shards / "shards" / "all" / "val" / "jpeg-10"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-m", "trainer.evaluation", "--arch", "mobilenet_v3_small", "--weights",
                        str(shards / "w.pth"), "--shards", str(where), "--group", "A=cat,zebra", "--workers", "0",
                        "--device", "cpu", "--out", str(tmp_path / "bad.json")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert p.returncode == 1, p.stderr[-2000:]
    assert p.stderr.splitlines() == [f"error: group 'A': 'zebra' is not a class of {where} "
                                     "(its class folders: cat, dog, fox, owl); indices go up to 7"], p.stderr[-2000:]
    assert p.stdout == "" and not (tmp_path / "bad.json").exists()
