"""Failure behaviour of the shard pipeline: hostile inputs and injected faults.

Every test makes its hostile files itself.  Each one failed on the code before the fix."""
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from pipeline.__main__ import cli
from pipeline.atomic import FolderLock
from pipeline.build import BuildError, build_setting
from pipeline.classes import LabelSpaceError
from pipeline.shards import record_path
from tests.conftest import synthetic_rgb


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


def _run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    text = result.output + (result.stderr if result.stderr_bytes is not None and result.stderr not in result.output
                            else "")
    return result.exit_code, text


def _one_line_error(code: int, text: str) -> str:
    """The CLI failed with one 'error:' line and no traceback; return that line."""
    assert code != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    return errors[0]


# -- 2: output inside the source, a label space that would change silently ---------------------------

def test_output_inside_the_source_is_refused(image_folder):
    src, split = image_folder
    with pytest.raises(BuildError, match="inside the source folder"):
        build_setting(src, None, "jpeg", 10, src / "val", progress=False)
    with pytest.raises(BuildError, match="inside the source folder"):
        build_setting(src, split, "jpeg", 10, src, progress=False)     # -> src/train/jpeg-10
    assert not (src / "val").exists() and not (src / split / "jpeg-10").exists()
    code, text = _run_cli("shards", "--codec", "jpeg", "--q", "10", "--src", src, "--out", src / "val", "--no-progress")
    assert "inside the source folder" in _one_line_error(code, text)


def test_a_stray_folder_never_relabels_a_split_of_wnids(image_folder, tmp_path):
    src, split = image_folder
    (src / split / "lost+found").mkdir()
    Image.fromarray(synthetic_rgb(260, 260)).save(src / split / "lost+found" / "x.jpg")
    with pytest.raises(LabelSpaceError, match=r"'lost\+found' are not ImageNet-1k wnids"):
        build_setting(src, split, "jpeg", 10, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    code, text = _run_cli("shards", "--codec", "jpeg", "--q", "10", "--src", src, "--split", split,
                          "--out", tmp_path / "out", "--no-progress")
    assert "lost+found" in _one_line_error(code, text)
    table = tmp_path / "classes.txt"      # the way out: say which label space is meant
    table.write_text("0\tn01440764\n217\tn02102040\n999\tlost+found\n")
    m = build_setting(src, split, "jpeg", 10, tmp_path / "out", classes_file=table, progress=False)
    assert m["class_index"] == {"lost+found": 999, "n01440764": 0, "n02102040": 217}


# -- 3: the (tar, record) pair is committed and checked together ---------------------------------------

def _replace_one_image(src: Path, split: str) -> None:
    p = sorted((src / split / "n01440764").glob("*.JPEG"))[0]
    Image.fromarray(synthetic_rgb(300, 300, seed=99)).save(p, quality=80)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # coarse clocks: make the change visible


def test_an_old_tar_beside_a_new_record_is_redone(image_folder, tmp_path):
    """The crash the old order allowed: the record of the new plan committed, the tar still the
    old one.  The record names its tar's size and hash, so the pair is recognised as stale."""
    src, split = image_folder
    out, folder = tmp_path / "out", tmp_path / "out" / split / "jpeg-30"
    build_setting(src, split, "jpeg", 30, out, shard_size=3, order="sorted", progress=False)
    old = _tars(folder)
    _replace_one_image(src, split)
    build_setting(src, split, "jpeg", 30, out, shard_size=3, order="sorted", progress=False)
    new = _tars(folder)
    changed = [n for n in new if new[n] != old[n]]
    assert changed == ["shard-000000.tar"]
    (folder / changed[0]).write_bytes(old[changed[0]])           # old tar, new record
    build_setting(src, split, "jpeg", 30, out, shard_size=3, order="sorted", progress=False)
    assert _tars(folder) == new


def test_a_crash_between_tar_and_record_is_redone(image_folder, tmp_path, monkeypatch):
    """Tar committed, then the process dies before its record: the next run must not trust
    the old record with the new tar (nor the new tar without a record)."""
    import pipeline.shards as shards_mod

    src, split = image_folder
    out, folder = tmp_path / "out", tmp_path / "out" / split / "jpeg-30"
    build_setting(src, split, "jpeg", 30, out, shard_size=3, order="sorted", progress=False)
    old_record = record_path(folder, 0).read_bytes()
    _replace_one_image(src, split)

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed between the tar and its record")
    monkeypatch.setattr(shards_mod, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        build_setting(src, split, "jpeg", 30, out, shard_size=3, order="sorted", progress=False)
    assert record_path(folder, 0).read_bytes() == old_record       # the stale record is still there
    monkeypatch.undo()
    m = build_setting(src, split, "jpeg", 30, out, shard_size=3, order="sorted", progress=False)
    fresh = tmp_path / "fresh"
    build_setting(src, split, "jpeg", 30, fresh, shard_size=3, order="sorted", progress=False)
    assert _tars(folder) == _tars(fresh / split / "jpeg-30") and m["count"] == 6


# -- 4: a replaced or repaired image rebuilds its shard ------------------------------------------------

def test_a_replaced_image_rebuilds_its_shard(image_folder, tmp_path):
    src, split = image_folder
    out, folder = tmp_path / "out", tmp_path / "out" / split / "jpeg-30"
    build_setting(src, split, "jpeg", 30, out, shard_size=3, order="sorted", progress=False)
    before = _tars(folder)
    _replace_one_image(src, split)
    build_setting(src, split, "jpeg", 30, out, shard_size=3, order="sorted", progress=False)
    after = _tars(folder)
    assert after["shard-000000.tar"] != before["shard-000000.tar"]
    assert after["shard-000001.tar"] == before["shard-000001.tar"]


def test_a_repaired_image_leaves_failed(image_folder, tmp_path):
    src, split = image_folder
    path = src / split / "n01440764" / "late.JPEG"
    good = path.with_name("good.jpg")
    Image.fromarray(synthetic_rgb(280, 300, seed=7)).save(good, quality=90)
    data = good.read_bytes()
    good.unlink()
    path.write_bytes(data[: len(data) // 3])                           # truncated copy
    m = build_setting(src, split, "jpeg", 30, tmp_path / "out", shard_size=4, progress=False)
    assert [Path(f["path"]).name for f in m["failed"]] == ["late.JPEG"] and m["count"] == 6
    path.write_bytes(data)                                             # repaired
    m = build_setting(src, split, "jpeg", 30, tmp_path / "out", shard_size=4, progress=False)
    assert m["failed"] == [] and m["count"] == 7


# -- 5: file names that are not UTF-8 ------------------------------------------------------------------

def test_non_utf8_file_name_is_processed(image_folder, tmp_path):
    src, split = image_folder
    bad = os.fsencode(src / split / "n01440764") + b"/bad\xff.JPEG"
    with open(bad, "wb") as f:
        Image.fromarray(synthetic_rgb(260, 280, seed=3)).save(f, "JPEG", quality=90)
    m = build_setting(src, split, "jpeg", 30, tmp_path / "out", shard_size=4, progress=False)
    assert m["count"] == 7 and m["failed"] == []
    folder = tmp_path / "out" / split / "jpeg-30"
    for name in ("manifest.json", "manifest.csv", "plan.json"):
        (folder / name).read_bytes().decode("utf-8")                  # strict UTF-8
    json.loads((folder / "manifest.json").read_bytes().decode("utf-8"))
    keys = {s["__key__"]: json.loads(s["json"]) for s in wds.WebDataset(sorted(str(p) for p in folder.glob("*.tar")),
                                                                      shardshuffle=False)}
    assert keys["n01440764/bad_xff_JPEG"]["path"] == "n01440764/bad\\xff.JPEG"


def test_non_utf8_name_that_fails_is_recorded(image_folder, tmp_path):
    src, split = image_folder
    with open(os.fsencode(src / split / "n01440764") + b"/broken\xfe.JPEG", "wb") as f:
        f.write(b"\xff\xd8 not really a jpeg")
    m = build_setting(src, split, "jpeg", 30, tmp_path / "out", progress=False)
    assert m["count"] == 6 and [f["path"].rsplit("/", 1)[1] for f in m["failed"]] == ["broken\\xfe.JPEG"]


# -- 13: one build per folder --------------------------------------------------------------------------

def test_a_second_build_on_the_same_output_is_refused(image_folder, tmp_path):
    src, split = image_folder
    folder = tmp_path / "out" / split / "jpeg-10"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pipeline.atomic import FolderLock
        with FolderLock({str(folder)!r}, "shard build"):
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, text = _run_cli("shards", "--codec", "jpeg", "--q", "10", "--src", src, "--split", split,
                              "--out", tmp_path / "out", "--no-progress")
        line = _one_line_error(code, text)
        assert f"pid {holder.pid}" in line and "locked" in line
        assert not list(folder.glob("shard-*"))
    finally:
        holder.kill()
        holder.wait()
    code, text = _run_cli("shards", "--codec", "jpeg", "--q", "10", "--src", src, "--split", split,
                          "--out", tmp_path / "out", "--no-progress")
    assert code == 0, text


def test_node_ranks_do_not_block_each_other_but_block_a_whole_build(image_folder, tmp_path):
    src, split = image_folder
    folder = tmp_path / "out" / split / "jpeg-10"
    with FolderLock(folder, "shard build of rank 1", name=".lock-rank-1"):
        m = build_setting(src, split, "jpeg", 10, tmp_path / "out", shard_size=2, num_nodes=2, node_rank=0,
                          progress=False)
        assert m is None                                       # rank 1's shards are still missing
        code, text = _run_cli("shards", "--codec", "jpeg", "--q", "10", "--src", src, "--split", split,
                              "--out", tmp_path / "out", "--no-progress")
        assert "locked" in _one_line_error(code, text)


# -- 14: links -----------------------------------------------------------------------------------------

def test_symlink_loops_and_dangling_links_are_recorded(image_folder, tmp_path):
    src, split = image_folder
    d = src / split / "n01440764"
    os.symlink("missing.JPEG", d / "dangling.JPEG")
    os.symlink("loop_b.JPEG", d / "loop_a.JPEG")
    os.symlink("loop_a.JPEG", d / "loop_b.JPEG")
    os.symlink(".", d / "self")                                    # a folder loop
    os.symlink(d / "n01440764_0000.JPEG", d / "alias.JPEG")        # a good link is followed
    m = build_setting(src, split, "jpeg", 10, tmp_path / "out", progress=False)
    reasons = {Path(f["path"]).name: f["reason"] for f in m["failed"]}
    assert "dangling symbolic link" in reasons["dangling.JPEG"]
    assert reasons["loop_a.JPEG"] == reasons["loop_b.JPEG"] == "symbolic link loop"
    assert "link loop" in reasons["self"]
    assert m["count"] == 7


def test_a_fifo_is_recorded_not_opened(image_folder, tmp_path):
    src, split = image_folder
    os.mkfifo(src / split / "n01440764" / "pipe.JPEG")
    m = build_setting(src, split, "jpeg", 10, tmp_path / "out", progress=False)
    assert [(Path(f["path"]).name, f["reason"]) for f in m["failed"]] == [("pipe.JPEG", "a FIFO, not an image file")]


# -- 15: user errors are one line ----------------------------------------------------------------------

@pytest.mark.parametrize("q", ["inf", "nan", "-inf", "ten"])
def test_q_that_is_not_a_finite_number(image_folder, tmp_path, q):
    src, split = image_folder
    code, text = _run_cli("shards", "--codec", "jpeg", "--q", q, "--src", src, "--split", split, "--out", tmp_path)
    assert "--q" in text and "Traceback" not in text and code != 0


def test_summary_without_a_manifest(tmp_path):
    code, text = _run_cli("summary", tmp_path)
    assert "no manifest" in _one_line_error(code, text)


def test_disk_full_names_the_output_and_commits_nothing(image_folder, tmp_path, monkeypatch):
    import pipeline.shards as shards_mod

    src, split = image_folder
    original = shards_mod._HashingFile.write
    budget = {"left": 40_000}

    def write(self, data):
        budget["left"] -= len(data)
        if budget["left"] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)
    monkeypatch.setattr(shards_mod._HashingFile, "write", write)
    code, text = _run_cli("shards", "--codec", "jpeg", "--q", "10", "--src", src, "--split", split,
                          "--out", tmp_path / "out", "--jobs", "1", "--shard-size", "2", "--no-progress")
    line = _one_line_error(code, text)
    folder = tmp_path / "out" / split / "jpeg-10"
    assert "no space left" in line and "nothing was committed" in line and str(folder) in line
    assert not list(folder.glob(".shard-*")) and not (folder / "manifest.json").exists()
    complete = sorted(p.name for p in folder.glob("shard-*.tar"))
    for name in complete:                       # what was committed before the disk filled up is whole
        assert len(list(wds.WebDataset(str(folder / name), shardshuffle=False))) == 2


def test_too_many_failures_fail_loudly(image_folder, tmp_path):
    src, split = image_folder
    for i in range(2):
        (src / split / "n01440764" / f"junk{i}.JPEG").write_bytes(b"junk")
    args = ["shards", "--codec", "jpeg", "--q", "10", "--src", src, "--split", split, "--out", tmp_path, "--no-progress"]
    code, text = _run_cli(*args)
    assert "2 of 8 inputs failed (25.0%)" in _one_line_error(code, text)
    assert json.loads((tmp_path / split / "jpeg-10" / "manifest.json").read_text())["count"] == 6   # nothing lost
    code, text = _run_cli(*args, "--max-failed", "0.5")
    assert code == 0, text


# -- 17: hardening -------------------------------------------------------------------------------------

def test_eps_source_is_recorded_and_ghostscript_never_runs(image_folder, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    src, split = image_folder
    (src / split / "n01440764" / "doc.JPEG").write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 300 300\n%%EndComments\nshowpage\n%%EOF\n")
    m = build_setting(src, split, "jpeg", 10, tmp_path / "out", progress=False)
    assert calls == []
    assert [Path(f["path"]).name for f in m["failed"]] == ["doc.JPEG"]
    assert "UnidentifiedImageError" in m["failed"][0]["reason"]


def test_manifest_temporary_names_are_unique(image_folder, tmp_path):
    """A fixed temporary name (.manifest.json.tmp) lets two writers clobber each other; a
    leftover of that name must not matter either."""
    src, split = image_folder
    folder = tmp_path / split / "jpeg-10"
    (folder / ".manifest.json.tmp").mkdir(parents=True)
    (folder / ".manifest.csv.tmp").mkdir()
    m = build_setting(src, split, "jpeg", 10, tmp_path, progress=False)
    assert json.loads((folder / "manifest.json").read_text())["count"] == m["count"] == 6


def test_outputs_are_readable_by_others(image_folder, tmp_path):
    src, split = image_folder
    build_setting(src, split, "jpeg", 10, tmp_path, progress=False)
    folder = tmp_path / split / "jpeg-10"
    for p in [*folder.glob("shard-*.tar"), folder / "manifest.json", folder / "manifest.csv"]:
        assert p.stat().st_mode & 0o044 == 0o044 & ~_umask(), p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_every_command_error_is_one_lowercase_error_line(image_folder, tmp_path):
    """The pipeline's usage errors and the errors its commands let through print like the
    trainer's: one ``error:`` line, status 2 for a usage error, 1 for a user error."""
    src, _ = image_folder
    code, text = _run_cli("shards", "--codec", "jpeg", "--q", "10", "--src", tmp_path / "absent", "--out", tmp_path / "o")
    assert code == 2 and "Usage" not in text and "absent" in _one_line_error(code, text)
    code, text = _run_cli("shards", "--codec", "nope", "--src", src, "--out", tmp_path / "o", "--no-progress")
    assert code == 1 and "unknown codec 'nope'" in _one_line_error(code, text)
