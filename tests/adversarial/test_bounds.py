"""Whatever a file says is bounded before it allocates, recurses or loops."""
from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from receiver import predict
from trainer.reports import recommend, report
from pipeline.__main__ import cli as pipeline_cli
from tests.conftest import synthetic_rgb
from trainer import evaluation as teval, run

from .conftest import ARCH, edit_manifest, eval_args, one_error, train_args

DEEP = "[" * 1000 + "]" * 1000          # 2 KB; json recurses once per level
#: the billion laughs: 10 levels of 10 aliases, 10^10 values once expanded, in 1 KB
LAUGHS = "shards: [&l0 [lol], " + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)) + "]\n"


def pipeline_cmd(*args: str):
    """(exit status, stderr) of ``python -m pipeline ARGS`` run in-process."""
    result = CliRunner().invoke(pipeline_cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("command", ["summary", "check"])
def test_a_deep_manifest_is_one_line_in_the_pipeline(animals, copy_of, command):
    folder = copy_of(animals["val3"])
    (folder / "manifest.json").write_text(DEEP)
    status, out = pipeline_cmd(command, str(folder))
    assert status != 0 and "Traceback" not in out
    assert "nested" in out and "manifest.json" in out


def test_a_deep_manifest_is_one_line_in_eval(animals, run_dir, copy_of, tmp_path, capsys):
    folder = copy_of(animals["val3"])
    (folder / "manifest.json").write_text(DEEP)
    assert teval.main(eval_args(run_dir / "best.pth", folder, tmp_path / "r.json")) == 1
    assert "nested" in one_error(capsys.readouterr().err)


def test_a_deep_results_file_is_one_line_in_recommend_report_and_the_eval_merge(animals, run_dir, tmp_path,
                                                                                capsys):
    res = tmp_path / "results.json"
    res.write_text(DEEP)
    assert recommend.main(["--budget", "1000", "--results", str(res)]) == 1
    assert "nested" in one_error(capsys.readouterr().err)
    assert report.main(["--results", str(res), "--out", str(tmp_path / "rep")]) == 1
    assert "nested" in one_error(capsys.readouterr().err)
    assert teval.main(eval_args(run_dir / "best.pth", animals["val3"], res)) == 1
    assert "nested" in one_error(capsys.readouterr().err)
    assert res.read_text() == DEEP     # not replaced


@pytest.mark.parametrize("text, words", [
    ("a: " + "[" * 1000 + "]" * 1000 + "\n", "nested"),
    ("seed: " + "9" * 5000 + "\n", "not a readable"),                                   # int() digit limit
    # the billion laughs: 10 levels of 10 aliases, 10^10 values once expanded
    (LAUGHS, "expanded"),
])
@pytest.mark.timeout(60)
def test_a_config_bomb_is_refused_quickly(tmp_path, capsys, text, words):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    t0 = time.perf_counter()
    assert run.main(["--config", str(cfg), "--out", str(tmp_path / "r")]) == 1
    assert time.perf_counter() - t0 < 10
    assert words in one_error(capsys.readouterr().err)


def test_a_huge_class_count_in_a_manifest_is_refused_before_allocating(animals, copy_of, tmp_path, capsys):
    folder = copy_of(animals["train"])
    edit_manifest(folder, lambda m: m.update(num_classes=1_000_000_000))
    assert run.main(train_args(folder, tmp_path / "r")) == 1
    assert "num_classes" in one_error(capsys.readouterr().err)


def test_a_huge_class_count_in_a_checkpoint_is_refused_before_allocating(run_dir, tmp_path, capsys):
    ckpt = torch.load(run_dir / "best.pth", weights_only=True)
    ckpt["num_classes"] = 1_000_000_000
    bad = tmp_path / "bad.pth"
    torch.save(ckpt, bad)
    img = tmp_path / "x.jpg"
    Image.fromarray(synthetic_rgb(224, 224)).save(img)
    assert predict.main(["--model", str(bad), "--device", "cpu", str(img)]) == 1
    assert "num_classes" in one_error(capsys.readouterr().err)


@pytest.mark.parametrize("n", ["1000000000", "99999999999999999999"])
def test_a_huge_class_count_option_is_refused(animals, tmp_path, capsys, n):
    assert run.main(train_args(animals["train"], tmp_path / "r", "--num-classes", n)) == 1
    assert "--num-classes" in one_error(capsys.readouterr().err)


def test_a_huge_results_file_is_refused_by_size(tmp_path, capsys, monkeypatch):
    import pipeline.bounded as bounded
    monkeypatch.setattr(bounded, "MAX_BYTES", 1000)
    monkeypatch.setattr(bounded.read_json, "__kwdefaults__", {**bounded.read_json.__kwdefaults__, "max_bytes": 1000})
    res = tmp_path / "results.json"
    res.write_text(json.dumps([{"setting": "jpeg-10", "pad": "x" * 2000}]))
    assert recommend.main(["--budget", "1000", "--results", str(res)]) == 1
    assert "limit" in one_error(capsys.readouterr().err)


def test_build_workers_are_bounded(tmp_path):
    from pipeline.build import BuildError, build_setting

    from .conftest import make_split
    make_split(tmp_path / "src", "train", ("cat", "dog"), per_class=1)
    with pytest.raises(BuildError, match="--jobs"):
        build_setting(src=tmp_path / "src", split="train", codec="jpeg", q=10, out=tmp_path / "out",
                      jobs=10**6, progress=False)
