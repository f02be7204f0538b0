"""The evaluation cache: an unchanged (model, shard folder) pair is not evaluated again, and
anything that changes a row (the model's bytes, the folder's manifest or tars, an option)
is.  No timing: "not evaluated" means the evaluation function is never called."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.manifest import digest as manifest_digest
from tests.trainer_helpers import build_shards
from trainer import EvalConfig, evaluate, evaluation
from trainer import evaluation as teval
from trainer.eval_cache import DIR_NAME, Summary
from trainer.models import build_model

ARCH = "mobilenet_v3_small"
BOTH = ["jpeg-10", "lossless"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cache")
    build_shards(root, codecs=(("jpeg", 10), ("lossless", None)), per_class=2, shard_size=2, splits=("val",))
    torch.manual_seed(0)
    torch.save(build_model(ARCH, None, 1000).net.state_dict(), root / "w.pth")
    return root


@pytest.fixture
def work(clean, tmp_path):
    """A private copy of the shards and the weights that a test may change."""
    shutil.copytree(clean / "shards", tmp_path / "shards")
    shutil.copy(clean / "w.pth", tmp_path / "w.pth")
    return tmp_path


def config(work: Path, **kw) -> EvalConfig:
    base = dict(arch=ARCH, weights=[str(work / "w.pth")], shards=[str(work / "shards" / "val" / "*" / "*.tar")],
                out=str(work / "reports" / "results.json"), workers=0, progress=False, batch_size=4)
    return EvalConfig(**{**base, **kw})


def run(cfg: EvalConfig) -> tuple[list[dict], Summary]:
    summary = Summary()
    rows = evaluate(cfg, summary=summary)
    return rows, summary


def names(pairs) -> list[str]:
    return sorted(setting for _, setting in pairs)


def refuse_evaluation(monkeypatch) -> None:
    """From now on a real evaluation fails the test: what still works came from the cache."""
    def refuse(*a, **k):
        raise AssertionError("evaluate_model was called")
    monkeypatch.setattr(evaluation, "evaluate_model", refuse)


def test_second_evaluation_reuses_every_pair(work, monkeypatch):
    rows1, s1 = run(config(work))
    assert names(s1.computed) == BOTH and s1.reused == []
    assert len(list((work / "reports" / DIR_NAME).glob("*.json"))) == 2
    results1 = (work / "reports" / "results.json").read_text()

    refuse_evaluation(monkeypatch)
    rows2, s2 = run(config(work))
    assert names(s2.reused) == BOTH and s2.computed == []
    assert rows2 == rows1                                   # the same rows, in the same order
    assert (work / "reports" / "results.json").read_text() == results1
    assert "reused 2 of 2" in s2.line()


def test_changed_weights_are_evaluated_again(work):
    run(config(work))
    sd = torch.load(work / "w.pth", weights_only=True)
    name = next(k for k, v in sd.items() if v.is_floating_point())
    sd[name] = sd[name] + 0.01
    torch.save(sd, work / "w.pth")
    _, s = run(config(work))
    assert names(s.computed) == BOTH and s.reused == []


def test_a_moved_checkpoint_is_the_same_model_under_its_new_name(work, monkeypatch):
    """Keyed by content, not by path: the rows name the file as it is called now."""
    sd = torch.load(work / "w.pth", weights_only=True)
    ckpt = work / "run" / "best.pth"
    ckpt.parent.mkdir()
    torch.save({"model": sd, "arch": ARCH, "num_classes": 1000, "epoch": 1,
                "args": {"method": "expert", "trained_on": "jpeg-10", "labels": "teacher"}}, ckpt)
    rows1, _ = run(config(work, weights=[], arch=None, checkpoints=[str(ckpt)]))
    moved = work / "elsewhere.pth"
    shutil.move(ckpt, moved)
    refuse_evaluation(monkeypatch)
    rows2, s = run(config(work, weights=[], arch=None, checkpoints=[str(moved)]))
    assert names(s.reused) == BOTH
    assert {r["checkpoint"] for r in rows2} == {str(moved)}
    assert [(r["method"], r["trained_on"], r["labels"], r["top1"]) for r in rows2] == \
        [(r["method"], r["trained_on"], r["labels"], r["top1"]) for r in rows1]


def test_changed_manifest_reevaluates_that_setting_only(work):
    run(config(work))
    manifest = work / "shards" / "val" / "jpeg-10" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["mean"]["bytes"] += 1.0                             # e.g. the folder was rebuilt with other bytes
    manifest.write_text(json.dumps(doc))
    rows, s = run(config(work))
    assert names(s.computed) == ["jpeg-10"] and names(s.reused) == ["lossless"]
    assert [r["setting"] for r in rows] == BOTH and rows[0]["mean_bytes"] == doc["mean"]["bytes"]


def test_a_rebuild_of_the_same_bytes_keeps_the_cache(work, monkeypatch):
    """A build that finds every shard complete rewrites manifest.json with a new time stamp and
    timings: the same data, so nothing is evaluated again (the demo's second run)."""
    run(config(work))
    manifest = work / "shards" / "val" / "jpeg-10" / "manifest.json"
    doc = json.loads(manifest.read_text())
    before = manifest_digest(doc)
    doc["created"] = "2031-01-01T00:00:00+0000"
    doc["timing_ms_mean"] = {k: 1.0 for k in doc["timing_ms_mean"]}
    manifest.write_text(json.dumps(doc, indent=4))
    assert manifest_digest(doc) == before
    refuse_evaluation(monkeypatch)
    _, s = run(config(work))
    assert names(s.reused) == BOTH


def test_a_tar_changed_behind_the_manifest_is_evaluated_again(work):
    run(config(work))
    tar = sorted((work / "shards" / "val" / "lossless").glob("*.tar"))[0]
    data = tar.read_bytes()
    tar.write_bytes(data)                                   # same bytes, new mtime: someone touched it
    _, s = run(config(work))
    assert names(s.computed) == ["lossless"] and names(s.reused) == ["jpeg-10"]


def test_options_that_change_rows_are_part_of_the_key(work):
    run(config(work))
    _, s = run(config(work, limit=1))
    assert names(s.computed) == BOTH                        # another sample count
    _, s = run(config(work, workers=1, batch_size=2, progress=True))
    assert names(s.reused) == BOTH                          # how fast, not what
    _, s = run(config(work, shards=[str(work / "shards" / "val" / "jpeg-10" / "shard-000000.tar")]))
    assert names(s.computed) == ["jpeg-10"]                 # a subset of the shards is other data


def test_force_and_no_cache(work):
    run(config(work))
    _, s = run(config(work, force=True))
    assert names(s.computed) == BOTH and s.reused == [] and "(--force)" in s.line()
    _, s = run(config(work, cache=False))
    assert names(s.computed) == BOTH and s.folder is None
    _, s = run(config(work, out=None))                      # nothing written: no cache either
    assert names(s.computed) == BOTH and s.folder is None


def test_unreadable_entry_is_recomputed(work, caplog):
    run(config(work))
    for entry in (work / "reports" / DIR_NAME).glob("*.json"):
        entry.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="trainer.eval"):
        _, s = run(config(work))
    assert names(s.computed) == BOTH and "unreadable evaluation cache entry" in caplog.text
    _, s = run(config(work))
    assert names(s.reused) == BOTH                          # rewritten


def test_cli_says_what_it_reused_and_force_recomputes(work, capsys, caplog):
    argv = ["--arch", ARCH, "--weights", str(work / "w.pth"), "--shards", str(work / "shards" / "val" / "*" / "*.tar"),
            "--out", str(work / "r" / "results.json"), "--workers", "0", "--no-progress"]
    with caplog.at_level(logging.INFO, logger="trainer.eval"):
        assert teval.main(argv) == 0
        assert "reused 0 of 2" in caplog.text
        caplog.clear()
        assert teval.main(argv) == 0
        assert "reused 2 of 2" in caplog.text
        caplog.clear()
        assert teval.main(argv + ["--force"]) == 0
        assert "reused 0 of 2" in caplog.text and "evaluated 2 (--force)" in caplog.text


def test_class_groups_are_part_of_the_key(work, monkeypatch):
    from tests.trainer_helpers import CLASSES

    a, b = {"A": [CLASSES[0]]}, {"B": [CLASSES[1]]}
    rows1, s1 = run(config(work, groups=a))
    assert names(s1.computed) == BOTH
    group_rows = [r for r in rows1 if r["group"] is not None]
    assert sorted({r["group"] for r in group_rows}) == ["A"] and len(group_rows) == 2
    rows2, s2 = run(config(work, groups=a))                # same groups: reused, the same rows
    assert names(s2.reused) == BOTH and s2.computed == []
    assert rows2 == rows1
    rows3, s3 = run(config(work, groups=b))                # other groups: evaluated again
    assert names(s3.computed) == BOTH and s3.reused == []
    assert sorted({r["group"] for r in rows3 if r["group"] is not None}) == ["B"]
