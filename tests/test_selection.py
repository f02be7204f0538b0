"""No model is chosen on the images it is scored on: every checkpoint records what chose it,
trainer.evaluation flags a row scored on those images (``selected_on_scored_data``), the summaries
and the report refuse flagged rows unless told, and the experiments choose on a selection
split of train images that is disjoint from the train and val subsets."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from trainer.reports import recommend
from trainer.reports import report as dreport
from experiments import common, summarize
from experiments.subsets import SubsetError, check_disjoint, images, make_subset
from pipeline.build import build_setting
from pipeline.manifest import digest as manifest_digest
from tests.conftest import make_image_folder
from tests.trainer_helpers import CLASSES, build_shards
from trainer import EvalConfig, TrainConfig, checkpoint, evaluate, train
from trainer.checkpoint import LAST_EPOCH, TRAIN_LOSS
from trainer.models import build_model
from trainer.selection import SelectionLeak, check_disjoint as check_images_disjoint, image_ids

ARCH = "mobilenet_v3_small"
FLAG = "selected_on_scored_data"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Shards (train, val, and val-like images of the same setting that are other photos), one
    run validated on the val shards and one without validation, and plain weights."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("selection")
    shards = build_shards(root, codecs=(("jpeg", 10),), per_class=2, shard_size=2, splits=("train", "val"))
    make_image_folder(root / "other-src", classes=CLASSES, per_class=2, size=(260, 240), split="val", seed=500)
    build_setting(src=root / "other-src", split="val", codec="jpeg", q=10, out=root / "other", shard_size=2,
                  jobs=1, progress=False)
    # the val photos again, built into shards of another size and another setting (another build)
    build_setting(src=root / "src", split="val", codec="jpeg", q=50, out=root / "rebuilt", shard_size=1,
                  jobs=1, progress=False)
    torch.manual_seed(0)
    torch.save(build_model(ARCH, None, 1000).net.state_dict(), root / "w.pth")
    base = dict(shards=[str(shards / "train" / "jpeg-10" / "*.tar")], arch=ARCH, weights=str(root / "w.pth"),
                num_classes=1000, batch_size=4, workers=0, progress=False, epochs=1, lr=1e-3, method="finetune")
    train(TrainConfig(**base, out=str(root / "val-run"), val_shards=[str(shards / "val" / "jpeg-10" / "*.tar")]))
    train(TrainConfig(**base, out=str(root / "plain-run")))
    return root


def score(root: Path, checkpoints=(), weights=(), folders=(), out: Path | None = None, **kw) -> list[dict]:
    shards = kw.pop("shards", None) or [str(Path(f) / "*.tar") for f in folders]
    cfg = EvalConfig(checkpoints=[str(c) for c in checkpoints], weights=[str(w) for w in weights],
                     arch=ARCH if weights else None, shards=shards,
                     out=str(out) if out else None, workers=0, progress=False, batch_size=4, **kw)
    return evaluate(cfg)


def flags(rows: list[dict]) -> dict[tuple[str, str], object]:
    return {(Path(r["checkpoint"] or r["weights"]).name, r["shards_dir"]): r[FLAG] for r in rows}


# --------------------------------------------------------------------------- the checkpoints

def test_every_checkpoint_records_what_chose_it(trained):
    best = checkpoint.load(trained / "val-run" / "best.pth")["selected_on"]
    val = trained / "shards" / "val" / "jpeg-10"
    manifest = json.loads((val / "manifest.json").read_text())
    assert best["by"] == "val_top1"
    with open(val / "manifest.csv", newline="") as f:
        crops = sorted(row["crop_sha256"] for row in csv.DictReader(f))
    assert len(set(crops)) == manifest["count"] == 4
    assert best["folders"] == [{"setting": "jpeg-10", "manifest": manifest_digest(manifest),
                                "shards": sorted(p.name for p in val.glob("*.tar")), "images": crops}]
    assert checkpoint.load(trained / "val-run" / "last.pth")["selected_on"] == LAST_EPOCH
    assert checkpoint.load(trained / "plain-run" / "best.pth")["selected_on"] == TRAIN_LOSS
    assert checkpoint.load(trained / "plain-run" / "last.pth")["selected_on"] == LAST_EPOCH


# --------------------------------------------------------------------------- trainer.evaluation

def test_flag_set_on_the_validation_folder_and_clear_elsewhere(trained, tmp_path):
    """(a) best.pth scored on the very folder it was validated on is flagged, also as a copy
    in another place and when only one of its shards is scored; (b) a disjoint folder (the
    train shards) and a folder of the same setting holding other images are not."""
    val = trained / "shards" / "val" / "jpeg-10"
    other = trained / "other" / "val" / "jpeg-10"
    train_dir = trained / "shards" / "train" / "jpeg-10"
    copy = tmp_path / "copy" / "val" / "jpeg-10"
    shutil.copytree(val, copy)
    assert json.loads((other / "manifest.json").read_text())["setting"] == "jpeg-10"
    best, last = trained / "val-run" / "best.pth", trained / "val-run" / "last.pth"
    rows = score(trained, checkpoints=[best, last], weights=[trained / "w.pth"],
                 folders=[val, other, train_dir, copy], cache=False)
    got = flags(rows)
    assert got[("best.pth", str(val))] is True
    assert got[("best.pth", str(copy))] is True          # the same images elsewhere
    assert got[("best.pth", str(other))] is False        # same setting, other images
    assert got[("best.pth", str(train_dir))] is False    # a disjoint folder
    assert {v for (name, _), v in got.items() if name in ("last.pth", "w.pth")} == {False}
    one = score(trained, checkpoints=[best], shards=[str(val / "shard-000000.tar")], cache=False)
    assert [r[FLAG] for r in one] == [True]


def test_a_leak_through_rebuilt_shards_is_flagged(trained):
    """The val photos rebuilt into other shards (another size, another setting) share no shard
    build with what chose best.pth, yet the same images: flagged by content identity."""
    rebuilt = trained / "rebuilt" / "val" / "jpeg-50"
    assert len(list(rebuilt.glob("*.tar"))) == 4
    rows = score(trained, checkpoints=[trained / "val-run" / "best.pth"], folders=[rebuilt], cache=False)
    assert [r[FLAG] for r in rows] == [True]
    one = score(trained, checkpoints=[trained / "val-run" / "best.pth"], shards=[str(rebuilt / "shard-000002.tar")],
                cache=False)
    assert [r[FLAG] for r in one] == [True]


def test_check_disjoint_compares_image_content(trained):
    """trainer.selection, the check other selections (a routing table's calibration) call."""
    val, rebuilt = trained / "shards" / "val" / "jpeg-10", trained / "rebuilt" / "val" / "jpeg-50"
    other, train_dir = trained / "other" / "val" / "jpeg-10", trained / "shards" / "train" / "jpeg-10"
    assert image_ids(val) == image_ids(rebuilt) and len(image_ids(val)) == 4
    with pytest.raises(SelectionLeak, match="routing: 4 image"):
        check_images_disjoint(image_ids(val), image_ids(rebuilt), "routing")
    with pytest.raises(SelectionLeak, match="1 image"):
        check_images_disjoint(image_ids(val) | {"x"}, image_ids(rebuilt, ["shard-000003.tar"]))
    check_images_disjoint(image_ids(val), image_ids(other))
    check_images_disjoint(image_ids(val), image_ids(train_dir))
    # shards whose manifest does not record identities: a leak cannot be ruled out
    (trained / "old").mkdir(exist_ok=True)
    assert image_ids(trained / "old") is None
    with pytest.raises(SelectionLeak, match="do not record"):
        check_images_disjoint(image_ids(trained / "old"), image_ids(val))


def test_old_checkpoints_are_unknown_and_the_cache_keeps_the_flag(trained, tmp_path):
    val = trained / "shards" / "val" / "jpeg-10"
    old = checkpoint.load(trained / "val-run" / "best.pth")
    del old["selected_on"]
    checkpoint.save(old, tmp_path / "old.pth")
    out = tmp_path / "reports" / "results.json"
    first = score(trained, checkpoints=[tmp_path / "old.pth", trained / "val-run" / "best.pth"], folders=[val],
                  out=out)
    assert [r[FLAG] for r in first] == [None, True]
    cached = list((tmp_path / "reports" / "eval-cache").glob("*.json"))
    assert len(cached) == 2 and {json.loads(p.read_text())["rows"][0][FLAG] for p in cached} == {None, True}
    again = score(trained, checkpoints=[tmp_path / "old.pth", trained / "val-run" / "best.pth"], folders=[val],
                  out=out)
    assert [r[FLAG] for r in again] == [None, True]
    on_disk = json.loads(out.read_text())
    assert [r[FLAG] for r in on_disk] == [None, True]
    header = out.with_suffix(".csv").read_text().splitlines()[0].split(",")
    assert FLAG in header


# --------------------------------------------------------------------------- summaries and reports

def _row(method, setting, top1, flag, trained_on=None):
    return {"checkpoint": None if method == "pretrained" else f"runs/{method}-{setting}-s0/best.pth",
            "weights": "w.pth", "arch": ARCH, "method": method, "labels": "dataset",
            "trained_on": trained_on, "setting": setting, "codec": "jpeg", "q": 10, "split": "val",
            "top1": top1, "top5": None, "count": 4, "mean_bytes": 700.0, "mean_bpp": 0.1, FLAG: flag}


ROWS = [_row("pretrained", "jpeg-10", 40.0, False), _row("finetune", "jpeg-10", 50.0, None, "jpeg-10"),
        _row("expert", "jpeg-10", 60.0, True, "jpeg-10")]


def test_summary_refuses_flagged_rows_unless_allowed(tmp_path, capsys):
    res = tmp_path / "r.json"
    res.write_text(json.dumps(ROWS))
    assert summarize.main([str(res)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "runs/expert-jpeg-10-s0/best.pth on jpeg-10" in err and "--allow-selected-on-scored" in err
    assert summarize.main([str(res), "--allow-selected-on-scored"]) == 0
    out = capsys.readouterr().out
    assert "60.00 †" in out and "50.00 †" in out and "40.00 †" not in out
    assert "† the checkpoint was chosen" in out
    # unknown (an older checkpoint: null) is refused like a flagged row, and shown marked when allowed
    res.write_text(json.dumps(ROWS[:2]))
    assert summarize.main([str(res)]) == 1
    assert "runs/finetune-jpeg-10-s0/best.pth on jpeg-10: the row does not record" in capsys.readouterr().err
    assert summarize.main([str(res), "--allow-selected-on-scored"]) == 0
    out = capsys.readouterr().out
    assert "50.00 †" in out and "40.00 †" not in out
    assert "1 row(s) of checkpoints that do not record what chose them" in out
    # a results file from before the column: unknown too, refused unless allowed
    res.write_text(json.dumps([{k: v for k, v in r.items() if k != FLAG} for r in ROWS]))
    assert summarize.main([str(res)]) == 1
    assert "unknown" in capsys.readouterr().err
    assert summarize.main([str(res), "--allow-selected-on-scored"]) == 0
    assert "50.00 †" in capsys.readouterr().out
    # clear rows pass unmarked
    res.write_text(json.dumps([ROWS[0], {**ROWS[1], FLAG: False}]))
    assert summarize.main([str(res)]) == 0
    assert "†" not in capsys.readouterr().out
    # --compare reads through the same rule
    other = tmp_path / "o.json"
    other.write_text(json.dumps(ROWS[:2]))
    res.write_text(json.dumps(ROWS))
    assert summarize.main(["--compare", f"a={res}", "--compare", f"b={other}"]) == 1
    assert "expert-jpeg-10-s0" in capsys.readouterr().err


def test_the_files_chosen_on_their_scored_images_are_refused(capsys):
    """The committed results whose runs validated on the images they score carry the flag."""
    for name in ("imagenette-h200-mixed", "imagenette-h200-3seeds", "imagenette-h200-labelfree-j2k200",
                 "imagenette-cpu-order-mixed"):
        path = Path(__file__).resolve().parents[1] / "experiments" / "results" / f"{name}.json"
        assert summarize.main([str(path)]) == 1, name
        assert "chosen on the images it is scored on" in capsys.readouterr().err
        assert summarize.main([str(path), "--allow-selected-on-scored"]) == 0
        assert "†" in capsys.readouterr().out


def test_report_and_recommender_refuse_flagged_rows_unless_allowed(tmp_path, capsys):
    res = tmp_path / "r.json"
    res.write_text(json.dumps(ROWS))
    out = tmp_path / "rep"
    assert dreport.main(["--results", str(res), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs/expert-jpeg-10-s0/best.pth on jpeg-10" in err
    assert not (out / "table1.md").exists()
    assert dreport.main(["--results", str(res), "--out", str(out), "--allow-selected-on-scored"]) == 0
    table = (out / "table1.md").read_text()
    line = next(ln for ln in table.splitlines() if ln.startswith("| jpeg-10"))
    assert "60.00 †" in line and "50.00 †" in line and "40.00 †" not in line
    assert "† the checkpoint was chosen" in table
    assert "runs/expert-jpeg-10-s0/best.pth` on jpeg-10" in (out / "report.md").read_text()
    assert recommend.main(["--results", str(res)]) == 1
    assert "expert-jpeg-10-s0" in capsys.readouterr().err
    assert recommend.main(["--results", str(res), "--allow-selected-on-scored"]) == 0
    assert "† the checkpoint was chosen" in capsys.readouterr().err


# --------------------------------------------------------------------------- the selection split

def _tree(root: Path, n: int = 5, classes=("a", "b")) -> Path:
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{cls}{i}.JPEG").write_bytes(b"x")
    return root


def test_selection_subset_is_disjoint_from_train_and_val(tmp_path):
    """(d) of five train images a class, three go to the train subset and the selection split
    takes exactly the other two; the val subset is another split."""
    src = _tree(tmp_path / "src")
    subsets = tmp_path / "subsets"
    train_sub = make_subset(src, subsets / "train3", {"train": 3}, seed=0)
    val_sub = make_subset(src, subsets / "val2", {"val": 2}, seed=0)
    sel = common.select_subset(src, subsets, train_sub, 2, seed=0, val_subset=val_sub)
    assert sel.name == "src-select2-seed0-not-train3"
    train_imgs, sel_imgs, val_imgs = images(train_sub), images(sel), images(val_sub)
    assert len(train_imgs) == 6 and len(sel_imgs) == 4 and len(val_imgs) == 4
    every_train = {f"{src.resolve()}/train/{c}/{c}{i}.JPEG" for c in "ab" for i in range(5)}
    assert sel_imgs == every_train - train_imgs
    assert not (sel_imgs & val_imgs) and not (train_imgs & val_imgs)
    links = {str(p.resolve()) for p in (sel / "train").rglob("*.JPEG")}
    assert links == sel_imgs
    # a second call reuses it; a selection larger than what is left is cut to what is left
    assert common.select_subset(src, subsets, train_sub, 2, seed=0, val_subset=val_sub) == sel
    assert len(images(common.select_subset(src, subsets, train_sub, 4, seed=0))) == 4
    # nothing left: one line naming the source
    all5 = make_subset(src, subsets / "train5", {"train": 5}, seed=0)
    with pytest.raises(common.UserError, match="left outside the train subset"):
        common.select_subset(src, subsets, all5, 1, seed=0)


def test_check_disjoint_names_a_shared_image(tmp_path):
    src = _tree(tmp_path / "src")
    a = make_subset(src, tmp_path / "a", {"train": 3}, seed=0)
    b = make_subset(src, tmp_path / "b", {"train": 3}, seed=1)     # drawn without exclusion: overlaps
    with pytest.raises(SubsetError, match="share .*train/.*: the subsets must be disjoint"):
        check_disjoint(a, b)
    check_disjoint(a, make_subset(src, tmp_path / "c", {"val": 3}, seed=0))


def test_a_run_chosen_on_other_shards_is_not_reused(tmp_path):
    """A run folder left by another protocol (validated elsewhere, or not at all) is refused:
    its best.pth was chosen on other data."""
    run = tmp_path / "run"
    run.mkdir()
    common.check_validation(run, "sel/*.tar")                      # nothing trained yet
    (run / "args.json").write_text(json.dumps({"val_shards": None}))
    common.check_validation(run, None)
    with pytest.raises(common.UserError, match="trained with validation shards none, this experiment chooses on"):
        common.check_validation(run, "sel/*.tar")
    (run / "args.json").write_text(json.dumps({"val_shards": ["val/*.tar"]}))
    with pytest.raises(common.UserError, match=r"\['val/\*.tar'\]"):
        common.check_validation(run, "sel/*.tar")
    common.check_validation(run, "val/*.tar")
