"""``--setting-weights`` whose sum no float holds (1e308 twice) is one line, from the command
line and from a config file, never a loader traceback; weights within range still train."""
from __future__ import annotations

import pytest

from tests.adversarial.conftest import build, make_split, one_error, train_args


@pytest.fixture(scope="module")
def two_settings(tmp_path_factory):
    """jpeg-10 and jpeg-20 of the same images: one label space, two settings to mix."""
    root = tmp_path_factory.mktemp("mix")
    make_split(root / "src", "train", ("cat", "dog"))
    return [build(root / "src", "train", root / "shards", q=q) for q in (10, 20)]


def _args(two_settings, out, *extra):
    args = train_args(two_settings[0], out, *extra)
    return args + ["--shards", str(two_settings[1])]


@pytest.mark.parametrize("weights", ["jpeg-10=1e308,jpeg-20=1e308", "jpeg-10=1.7e308,jpeg-20=1.7e308"])
def test_weights_summing_to_infinity(two_settings, tmp_path, capsys, weights):
    from trainer import run
    rc = run.main(_args(two_settings, tmp_path / "r", "--setting-weights", weights))
    assert rc == 1
    assert "sum to more than a float holds" in one_error(capsys.readouterr().err)


def test_weights_summing_to_infinity_in_a_config(two_settings, tmp_path, capsys):
    from trainer import run
    (tmp_path / "run.yaml").write_text("setting_weights: {jpeg-10: 1.0e+308, jpeg-20: 1.0e+308}\n")
    rc = run.main(["--config", str(tmp_path / "run.yaml"), *_args(two_settings, tmp_path / "r")])
    assert rc == 1
    assert "sum to more than a float holds" in one_error(capsys.readouterr().err)


def test_large_finite_weights_still_train(two_settings, tmp_path):
    from trainer import run
    assert run.main(_args(two_settings, tmp_path / "r", "--setting-weights", "jpeg-10=1e300,jpeg-20=2e300",
                          "--steps-per-epoch", "1")) == 0
