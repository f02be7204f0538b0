"""Paths, files and processes: nothing written outside --out or through a planted link, an
output the machine refuses is one line, no worker outlives the build that holds the lock."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.__main__ import cli as pipeline_cli
from tests.conftest import ROOT
from trainer import run

from .conftest import make_split, one_error, train_args


def pipeline_cmd(*args: str):
    result = CliRunner().invoke(pipeline_cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    make_split(root / "base", "train", ("cat", "dog"), per_class=1)
    return root / "base"


@pytest.mark.parametrize("split", ["../train", "..", ""])
def test_a_split_is_one_folder_name(tmp_path, split):
    # SRC/../train exists (a sibling of SRC), so the old join read it and wrote OUT/../train
    make_split(tmp_path / "src", "train", ("cat", "dog"), per_class=1)
    make_split(tmp_path, "train", ("cat", "dog"), per_class=1)
    out = tmp_path / "escape" / "out"
    out.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    status, text = pipeline_cmd("shards", "--codec", "jpeg", "--q", "10", "--src", str(tmp_path / "src"),
                                "--split", split, "--out", str(out), "--jobs", "1", "--no-progress")
    assert status != 0 and "Traceback" not in text
    assert "--split" in text
    assert {p for p in tmp_path.rglob("*")} == before


def _refuse_writes_under(monkeypatch, root: Path, code: int = errno.EROFS) -> None:
    """Make everything under ``root`` behave as a read-only file system."""
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def under(path) -> bool:
        try:
            return Path(os.fsdecode(path)).absolute().is_relative_to(root)
        except TypeError:
            return False

    def fake_open(path, flags, *a, **kw):
        if flags & writing and under(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *a, **kw)

    def fake_mkdir(path, *a, **kw):
        if under(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *a, **kw)
    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("exists", [False, True])
def test_a_read_only_out_is_one_line_in_the_pipeline(src, tmp_path, monkeypatch, exists):
    out = tmp_path / "ro"
    if exists:
        out.mkdir()
    _refuse_writes_under(monkeypatch, out)
    status, text = pipeline_cmd("shards", "--codec", "jpeg", "--q", "10", "--src", str(src), "--split", "train",
                                "--out", str(out), "--jobs", "1", "--no-progress")
    assert status != 0 and "Traceback" not in text
    assert "read-only" in text.lower()


@pytest.mark.parametrize("exists", [False, True])
def test_a_read_only_out_is_one_line_in_training(animals, tmp_path, monkeypatch, capsys, exists):
    out = tmp_path / "ro"
    if exists:
        out.mkdir()
    _refuse_writes_under(monkeypatch, out)
    assert run.main(train_args(animals["train"], out / "r")) == 1
    assert "read-only" in one_error(capsys.readouterr().err).lower()


class _Full:
    """A file on a disk that fills up after ``room`` bytes."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_full_disk_while_a_checkpoint_is_saved_is_one_line(animals, tmp_path, monkeypatch, capsys):
    real = os.fdopen

    def fdopen(fd, *a, **kw):
        f = real(fd, *a, **kw)
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        return _Full(f, 4096) if ".last.pth." in name else f
    monkeypatch.setattr(os, "fdopen", fdopen)
    out = tmp_path / "r"
    assert run.main(train_args(animals["train"], out)) == 1
    line = one_error(capsys.readouterr().err)
    assert "last.pth" in line and "no space left" in line
    assert not (out / "last.pth").exists() and not list(out.glob(".last.pth.*"))


def test_the_build_lock_is_never_taken_through_a_planted_link(src, tmp_path):
    from pipeline.atomic import AtomicWriteError
    from pipeline.build import build_setting
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = tmp_path / "out" / "train" / "jpeg-10"
    folder.mkdir(parents=True)
    (folder / ".lock").symlink_to(victim)
    with pytest.raises(AtomicWriteError, match="symbolic link"):
        build_setting(src=src, split="train", codec="jpeg", q=10, out=tmp_path / "out", jobs=1, progress=False)
    assert victim.read_text() == "precious\n"
    # a hard link is refused the same way (the lock writes its holder into the file)
    (folder / ".lock").unlink()
    os.link(victim, folder / ".lock")
    with pytest.raises(AtomicWriteError, match="hard links"):
        build_setting(src=src, split="train", codec="jpeg", q=10, out=tmp_path / "out", jobs=1, progress=False)
    assert victim.read_text() == "precious\n"


def _children(pid: int) -> set[int]:
    out = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_build_worker_outlives_its_build(tmp_path, sig):
    make_split(tmp_path / "src", "train", ("cat", "dog"), per_class=16, size=(320, 240))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "shards", "--codec", "j2k", "--q", "20", "--src",
                             str(tmp_path / "src"), "--split", "train", "--out", str(tmp_path / "out"), "--jobs", "2",
                             "--shard-size", "2", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    folder = tmp_path / "out" / "train" / "j2k-20"
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= _children(proc.pid)
        if len(workers) >= 2 and len(list(folder.glob("shard-*.tar"))) >= 1:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:          # leave nothing running whatever the outcome
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"worker(s) {survivors} outlived the build"
    assert b"Traceback" not in proc.stderr.read()


def test_a_command_called_in_process_leaves_the_callers_signal_handlers(tmp_path, capsys):
    def mine(signum, frame):
        pass
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert run.main(["--shards", str(tmp_path / "none.tar"), "--out", str(tmp_path / "r")]) == 1
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
