"""Hostile ``trained_on`` lists and expert lists: every number a checkpoint gives the router is
checked at load (the computed rate too, not only its parts), repeated settings are refused, and
one checkpoint under two spellings is one expert."""
from __future__ import annotations

import pytest

from pipeline.codecs import Probe
from tests.adversarial.conftest import one_error
from tests.zoo_helpers import entry_of, write_expert


def _entry(**kw) -> dict:
    e = entry_of("jpeg-10", 0.3)
    e.update(kw)
    return e


HOSTILE = {
    "huge bpp": [_entry(bpp=10 ** 400)],
    "inf bpp": [_entry(bpp=float("inf"))],
    "nan bpp": [_entry(bpp=float("nan"))],
    "zero bpp": [_entry(bpp=0)],
    "negative bpp": [_entry(bpp=-1.0)],
    "absurd bpp": [_entry(bpp=1e9)],
    "string bpp": [_entry(bpp="0.3")],
    "ratio inf": [_entry(bpp=None, bytes_per_image=1e308, pixels_per_image=1e-308)],
    "ratio zero": [_entry(bpp=None, bytes_per_image=0, pixels_per_image=50176)],
    "zero pixels": [_entry(bpp=None, bytes_per_image=1000, pixels_per_image=0)],
    "huge bytes": [_entry(bpp=None, bytes_per_image=10 ** 400, pixels_per_image=50176)],
    "quality outside range": [_entry(setting="jpeg-1000")],
    "bpg quality outside range": [_entry(setting="bpg-99", codec="bpg")],
    "unknown codec": [_entry(setting="mp3-10", codec="mp3")],
    "repeated setting": [_entry(), _entry()],
    "repeated among others": [_entry(), entry_of("j2k-200", 0.12), _entry()],
    "negative weight": [_entry(weight=-1.0)],
    "inf weight": [_entry(weight=float("inf"))],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_trained_on_is_one_line_at_load(tmp_path, capsys, name):
    from receiver import predict
    write_expert(tmp_path / "runs" / "x", HOSTILE[name], seed=0)
    img = tmp_path / "a.jpg"
    img.write_bytes(b"\xff\xd8\xff")      # never reached: the zoo fails first
    rc = predict.main(["--experts", str(tmp_path / "runs"), "--device", "cpu", str(img)])
    assert rc == 1
    line = one_error(capsys.readouterr().err)
    assert "trained_on" in line and "best.pth" in line


def test_repeated_settings_in_a_yaml_list_are_refused(tmp_path, capsys):
    from receiver import predict
    write_expert(tmp_path / "runs" / "x", [entry_of("jpeg-10", 0.3)], seed=0)
    (tmp_path / "experts.yaml").write_text("- {path: runs/x/best.pth, settings: [jpeg-10, jpeg-10]}\n")
    rc = predict.main(["--experts", str(tmp_path / "experts.yaml"), "--device", "cpu", str(tmp_path / "none.jpg")])
    assert rc == 1
    assert "more than once: jpeg-10" in one_error(capsys.readouterr().err)


def test_a_setting_weighted_zero_was_not_trained_on(tmp_path):
    """A generalist whose jpeg-10 share was 0 is a j2k-200 specialist, and routes as one."""
    from receiver.zoo import load_zoo
    write_expert(tmp_path / "runs" / "g", [{**entry_of("jpeg-10", 0.3), "weight": 0.0}, entry_of("j2k-200", 0.12)],
                 seed=0)
    zoo = load_zoo(tmp_path / "runs")
    card = next(iter(zoo.experts.values())).card
    assert [s.setting for s in card.settings] == ["j2k-200"] and card.specialist


def test_sane_rates_still_route(tmp_path):
    """The checks refuse only what is absurd: the paper's rates (0.05 to 24 bpp) load and route."""
    from receiver.zoo import load_zoo
    write_expert(tmp_path / "runs" / "lo", [entry_of("j2k-400", 0.06)], seed=0)
    write_expert(tmp_path / "runs" / "hi", [_entry(bpp=None, bytes_per_image=2003, pixels_per_image=50176,
                                                   setting="j2k-75", codec="j2k")], seed=1)
    zoo = load_zoo(tmp_path / "runs")
    assert zoo.choose(Probe("j2k", 224, 224, 2500))[0].name.endswith("hi")
    assert zoo.choose(Probe("j2k", 224, 224, 380))[0].name.endswith("lo")


def test_one_checkpoint_under_two_spellings_is_one_expert(tmp_path, monkeypatch):
    from receiver.zoo import load_zoo
    write_expert(tmp_path / "sub" / "a", [entry_of("jpeg-10", 0.3)], seed=0)
    (tmp_path / "experts.yaml").write_text("- {path: sub/a/best.pth}\n- {path: ./sub/a/best.pth}\n"
                                           "- {path: sub/../sub/a/best.pth}\n")
    zoo = load_zoo(tmp_path / "experts.yaml")
    assert list(zoo.experts) == ["sub/a/best.pth"]


def test_one_checkpoint_twice_with_other_settings_is_refused(tmp_path, capsys):
    from receiver import predict
    write_expert(tmp_path / "sub" / "a", [entry_of("jpeg-10", 0.3), entry_of("j2k-200", 0.12)], seed=0)
    (tmp_path / "experts.yaml").write_text("- {path: sub/a/best.pth, settings: [jpeg-10]}\n"
                                           "- {path: ./sub/a/best.pth, settings: [j2k-200]}\n")
    rc = predict.main(["--experts", str(tmp_path / "experts.yaml"), "--device", "cpu", str(tmp_path / "x.jpg")])
    assert rc == 1
    assert "listed twice" in one_error(capsys.readouterr().err)
