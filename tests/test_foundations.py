"""The small shared pieces: setting names, atomic writes, the folder lock, tables, the pixel budget."""
from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from pipeline.atomic import AtomicWriteError, FolderLock, LockedError, atomic_output, atomic_write
from pipeline.limits import ENV, DecodeBudget, PixelBudgetError, check_pixels
from pipeline.manifest import Manifest, ManifestError
from pipeline.markdown import table
from pipeline.setting import Setting, SettingError


@pytest.mark.parametrize("name,codec,q", [("jpeg-10", "jpeg", 10), ("j2k-200", "j2k", 200),
                                          ("j2k-37.5", "j2k", 37.5), ("lossless", "lossless", None),
                                          ("bpg-41", "bpg", 41)])
def test_setting_round_trip(name, codec, q):
    s = Setting.parse(name)
    assert (s.codec, s.q) == (codec, q)
    assert s.name == name == str(Setting(codec, q))


def test_setting_normalises_q():
    assert Setting("jpeg", 10.0).name == "jpeg-10"
    assert isinstance(Setting("jpeg", 10.0).q, int)


@pytest.mark.parametrize("bad", ["../../../tmp/x", "jpeg-10/..", "JPEG-10", "jpeg-", "jpeg--1", "jpeg-1e5",
                                 "", "jpeg-10 x", "a/b", "jpeg-inf", "jpeg-nan"])
def test_setting_refuses_non_names(bad):
    with pytest.raises(SettingError, match="not a setting name"):
        Setting.parse(bad)


def test_setting_refuses_bad_q():
    for q in (float("inf"), float("nan"), -1, True):
        with pytest.raises(SettingError):
            Setting("jpeg", q)


def test_setting_list():
    assert [s.name for s in Setting.parse_list("jpeg-75, j2k-200,lossless")] == ["jpeg-75", "j2k-200", "lossless"]
    with pytest.raises(SettingError, match="twice"):
        Setting.parse_list("jpeg-10,jpeg-10.0")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.json"
    atomic_write(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_output(p, "w") as f:
            f.write("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.json"]  # no temporary left behind


def test_atomic_write_names_output_on_os_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AtomicWriteError, match=r"cannot write .*nothing was committed"):
        atomic_write(blocker / "sub" / "out.txt", "data")


def _hold(folder, ready, release):
    with FolderLock(folder):
        ready.set()
        release.wait(10)


def test_folder_lock_names_holder(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    p.start()
    try:
        assert ready.wait(20)
        with pytest.raises(LockedError, match=rf"locked by pid {p.pid} "):
            FolderLock(tmp_path).acquire()
    finally:
        release.set()
        p.join(20)
    with FolderLock(tmp_path):  # free again once the holder is gone
        pass


def test_table():
    text = table(["a", "b"], [["x", 1.5], ["y|z", None]])
    assert text.splitlines() == ["| a | b |", "|---|---:|", "| x | 1.5 |", "| y\\|z | — |"]
    with pytest.raises(ValueError):
        table(["a", "b"], [["only one"]])


def test_pixel_budget(monkeypatch):
    monkeypatch.setenv(ENV, "100")                  # read by the commands' option, never by a decoder
    assert DecodeBudget().max_pixels == 50_000_000
    check_pixels(7000, 7000)
    with pytest.raises(PixelBudgetError, match="8192x8192"):
        check_pixels(8192, 8192, "x.bpg")
    small = DecodeBudget(max_pixels=100)
    with pytest.raises(PixelBudgetError):
        small.check_pixels(11, 10)
    small.check_pixels(10, 10)
    with pytest.raises(PixelBudgetError, match="whole number"):
        DecodeBudget(max_pixels=0)
    with pytest.raises(PixelBudgetError, match="whole number"):
        DecodeBudget(max_tiles=True)


def test_max_pixels_means_the_same_in_every_command(monkeypatch):
    """One declaration: the option, then M2M_MAX_PIXELS, then the default; a bad value is click's usage error."""
    import click
    from click.testing import CliRunner

    from pipeline.limits import max_pixels_option

    @click.command()
    @max_pixels_option
    def cmd(budget):
        click.echo(budget.max_pixels)

    monkeypatch.delenv(ENV, raising=False)
    assert CliRunner().invoke(cmd, []).output.strip() == "50000000"
    assert CliRunner().invoke(cmd, ["--max-pixels", "7"]).output.strip() == "7"
    monkeypatch.setenv(ENV, "9")
    assert CliRunner().invoke(cmd, []).output.strip() == "9"
    assert CliRunner().invoke(cmd, ["--max-pixels", "7"]).output.strip() == "7"
    monkeypatch.setenv(ENV, "lots")
    assert CliRunner().invoke(cmd, []).exit_code == 2


def test_manifest_refuses_path_escape(tmp_path):
    good = {"setting": "jpeg-10", "codec": "jpeg", "q": 10, "count": 3,
            "shards": [{"name": "shard-000000.tar", "count": 3}]}
    assert Manifest.from_dict(good).setting == Setting("jpeg", 10)
    for bad in ({**good, "setting": "../../../tmp/x"},
                {**good, "shards": [{"name": "../../etc/passwd", "count": 3}]},
                {**good, "count": "3"},
                {**good, "codec": "j2k"}):
        with pytest.raises(ManifestError):
            Manifest.from_dict(bad)
    with pytest.raises(ManifestError, match="no manifest"):
        Manifest.load(tmp_path)


def test_registry():
    from pipeline.registry import Registry

    reg = Registry("widget", LookupError)

    @reg.register
    class A:
        name = "a"

    assert reg.get("a") is A and "a" in reg and list(reg) == [A] and reg.names() == ["a"]
    with pytest.raises(LookupError, match="unknown widget 'b'; known: a"):
        reg.get("b")

    class A2:
        name = "a"
    with pytest.raises(RuntimeError, match="two widgets registered as 'a'"):
        reg.register(A2)
    reg.unregister("a")
    assert "a" not in reg


def test_paper_alias_expands_to_table1():
    from pipeline.setting import PAPER_SETTINGS

    names = [s.name for s in Setting.parse_list("paper")]
    assert names == list(PAPER_SETTINGS) and len(names) == 10 and names[0] == "lossless"
    with pytest.raises(SettingError, match="twice"):
        Setting.parse_list("paper,jpeg-10")
