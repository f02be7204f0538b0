"""FIFOs and devices where a user's file should be: every reader opens without blocking and
refuses what is not a regular file, with one line naming it, instead of waiting for a writer
that never comes (a FIFO) or reading for ever (/dev/zero)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import pytest

from tests.adversarial.conftest import eval_args, one_error, train_args
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def finishes(fn, *args, fifos=(), timeout: float = 60):
    """``fn(*args)``'s result; a call still blocked after ``timeout`` fails the test (and its
    FIFOs are opened for writing and closed, so that the blocked reader sees an end)."""
    out = {}

    def call():
        try:
            out["rc"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            out["error"] = exc
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for f in fifos:
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(10)
        pytest.fail(f"{getattr(fn, '__module__', fn)} blocked on a FIFO for {timeout:g} s")
    if "error" in out:
        raise out["error"]
    return out.get("rc")


def test_eval_of_a_checkpoint_that_is_a_fifo(animals, tmp_path, capsys):
    from trainer import evaluation as teval
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    for extra in ((), ("--no-cache",)):
        args = [a for a in eval_args(fifo, animals["val3"], tmp_path / "r.json") if a != "--no-cache"] + list(extra)
        assert finishes(teval.main, args, fifos=[fifo]) == 1
        assert "not a regular file" in one_error(capsys.readouterr().err)


def test_resume_auto_with_a_fifo_for_metrics(animals, run_dir, tmp_path, capsys):
    from trainer import run
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    (out / "metrics.jsonl").unlink()
    os.mkfifo(out / "metrics.jsonl")
    rc = finishes(run.main, train_args(animals["train"], out, "--resume", "auto"), fifos=[out / "metrics.jsonl"])
    assert rc == 1
    line = one_error(capsys.readouterr().err)
    assert "metrics.jsonl" in line and "not a regular file" in line


def test_a_fifo_in_place_of_a_shard_is_a_lost_shard(animals, run_dir, copy_of, tmp_path, capsys):
    from trainer import evaluation as teval
    shards = copy_of(animals["val3"])
    tar = sorted(shards.glob("shard-*.tar"))[0]
    tar.unlink()
    os.mkfifo(tar)
    rc = finishes(teval.main, eval_args(run_dir / "best.pth", shards, tmp_path / "r.json"), fifos=[tar])
    err = capsys.readouterr().err
    assert rc == 1 and tar.name in err and "not a regular file" in err, err[-2000:]
    assert "lost" in one_error(err) or "skipped" in one_error(err), err[-2000:]


def test_the_loader_reads_no_fifo(tmp_path):
    from trainer.data import tarstream
    fifo = tmp_path / "shard-000000.tar"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        finishes(lambda: list(tarstream.members(str(fifo))), fifos=[fifo])


def _limited(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A fresh process with 2 GB of address space: reading /dev/zero for ever ends in a
    MemoryError there, not in this machine's swap."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, preexec_fn=limit)


@pytest.mark.parametrize("command", ["dec", "info"])
def test_the_bpg_command_does_not_read_dev_zero(command, tmp_path):
    out = ["-o", str(tmp_path / "o.png")] if command == "dec" else []
    proc = _limited("import sys; from tools.bpg.__main__ import main; main(sys.argv[1:])", command, "/dev/zero",
                    *out)
    assert proc.returncode == 1 and "not a regular file" in proc.stderr, proc.stderr[-2000:]


def test_the_bpg_command_does_not_wait_on_a_fifo(tmp_path):
    fifo = tmp_path / "in.bpg"
    os.mkfifo(fifo)
    try:
        proc = _limited("import sys; from tools.bpg.__main__ import main; main(sys.argv[1:])", "info", str(fifo),
                        timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("python -m tools.bpg info waited on a FIFO")
    assert proc.returncode == 1 and "not a regular file" in proc.stderr, proc.stderr[-2000:]


def test_a_source_image_that_is_a_device_is_refused(tmp_path):
    from pipeline.crops import load_crop
    from pipeline.limits import FileKindError
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    with pytest.raises(FileKindError, match="not a regular file"):
        load_crop(link)
