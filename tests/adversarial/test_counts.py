"""Counts and completeness: what a manifest promises is what is read, or the difference is
counted; a count no shard can meet, or a picture of another size, never sizes the work."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from trainer import evaluation as teval, run

from .conftest import edit_manifest, eval_args, one_error, train_args


def rewrite(tar_path, edit) -> None:
    """``edit(members)`` -> new list of (name, bytes)."""
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def results(path):
    return [r for r in json.loads(path.read_text()) if r.get("group") is None]


def test_a_shard_with_more_samples_than_its_manifest_lists_is_not_silent(animals, run_dir, copy_of, tmp_path, capsys):
    folder = copy_of(animals["val3"])
    # shard-000000 gets a copy of its samples under new keys: 4 samples where the manifest lists 2
    rewrite(folder / "shard-000000.tar", lambda ms: ms + [(n.replace("/", "/extra-", 1) if "/" in n else "extra-" + n, d)
                                                          for n, d in ms])
    assert teval.main(eval_args(run_dir / "best.pth", folder, tmp_path / "r.json")) == 1
    assert "the manifest lists 2" in one_error(capsys.readouterr().err)
    # accepted as loss within --max-skip, the row says what happened
    assert teval.main(eval_args(run_dir / "best.pth", folder, tmp_path / "r.json", "--max-skip", "0.5")) == 0
    (row,) = results(tmp_path / "r.json")
    assert (row["count"], row["skipped"], row["expected"]) == (6, 2, 6)


def test_a_deleted_shard_is_lost_data_not_a_smaller_set(animals, run_dir, copy_of, tmp_path, capsys):
    folder = copy_of(animals["val3"])
    (folder / "shard-000002.tar").unlink()
    assert teval.main(eval_args(run_dir / "best.pth", folder, tmp_path / "r.json")) == 1
    assert "shard-000002.tar" in one_error(capsys.readouterr().err)
    assert teval.main(eval_args(run_dir / "best.pth", folder / "*.tar", tmp_path / "r.json", "--max-skip", "0.5")) == 0
    (row,) = results(tmp_path / "r.json")
    assert (row["count"], row["skipped"], row["expected"]) == (4, 2, 6)
    # the same in training
    train = copy_of(animals["train"])
    (train / "shard-000001.tar").unlink()
    assert run.main(train_args(train, tmp_path / "run")) == 1
    assert "shard-000001.tar" in one_error(capsys.readouterr().err)


def test_a_subset_chosen_by_pattern_is_not_a_loss(animals, run_dir, copy_of, tmp_path):
    folder = copy_of(animals["val3"])
    (folder / "shard-000002.tar").unlink()
    assert teval.main(eval_args(run_dir / "best.pth", folder / "shard-00000[01].tar", tmp_path / "r.json")) == 0
    (row,) = results(tmp_path / "r.json")
    assert (row["count"], row["skipped"], row["expected"]) == (4, 0, 4)


@pytest.mark.timeout(120)
def test_a_count_no_shard_can_meet_fails_before_the_first_pass(animals, copy_of, tmp_path, capsys):
    folder = copy_of(animals["train"])

    def inflate(m):
        m["shards"][0]["count"] = 10**12
        m["count"] = sum(s["count"] for s in m["shards"])
    edit_manifest(folder, inflate)
    assert run.main(train_args(folder, tmp_path / "r")) == 1
    assert "can hold" in one_error(capsys.readouterr().err)


def test_a_tar_the_manifest_does_not_list_is_refused(animals, copy_of, tmp_path, capsys):
    folder = copy_of(animals["train"])
    (folder / "shard-000009.tar").write_bytes((folder / "shard-000000.tar").read_bytes())
    assert run.main(train_args(folder, tmp_path / "r")) == 1
    assert "shard-000009.tar" in one_error(capsys.readouterr().err)


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


@pytest.mark.parametrize("w, h", [(3000, 3000), (16, 16), (224, 200)])
def test_one_picture_of_another_size_is_its_own_skip_not_the_batch_size(animals, run_dir, copy_of, tmp_path, w, h):
    folder = copy_of(animals["val3"])
    big = _jpeg(w, h)

    def first_comp(ms):
        done = False
        out = []
        for n, d in ms:
            if n.endswith(".comp.jpg") and not done:
                d, done = big, True
            out.append((n, d))
        return out
    rewrite(folder / "shard-000000.tar", first_comp)
    out = tmp_path / "r.json"
    assert teval.main(eval_args(run_dir / "best.pth", folder, out, "--max-skip", "0.5", "--batch-size", "4")) == 0
    (row,) = results(out)
    assert (row["count"], row["skipped"]) == (5, 1)
