"""A NUL byte in a path, from an option or from a file (an expert list, a config), is one line
naming it, never ``ValueError: embedded null byte``; a receiver's bad file name is that file's
error, and the other files are still classified."""
from __future__ import annotations

import pytest

from tests.adversarial.conftest import ARCH, one_error


def test_an_expert_list_entry_with_a_nul_byte(tmp_path, capsys):
    from receiver import predict
    (tmp_path / "experts.yaml").write_text('- {path: "a\\0b.pth"}\n')
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
    assert predict.main(["--experts", str(tmp_path / "experts.yaml"), str(tmp_path / "x.jpg")]) == 1
    assert "NUL byte" in one_error(capsys.readouterr().err)


@pytest.mark.parametrize("field", ["out", "shards", "val_shards", "teacher_cache"])
def test_a_config_path_with_a_nul_byte(animals, tmp_path, capsys, field):
    from trainer import run
    value = '"runs/a\\0b"' if field == "out" else '["x\\0y.tar"]' if field != "teacher_cache" else '"c\\0.npy"'
    (tmp_path / "run.yaml").write_text(f"{field}: {value}\n")
    given = {"out": str(tmp_path / "r"), "shards": str(animals["train"])}
    args = [a for k, v in given.items() if k != field for a in (f"--{k}", v)]
    assert run.main(["--config", str(tmp_path / "run.yaml"), "--arch", ARCH, "--device", "cpu", *args]) == 1
    line = one_error(capsys.readouterr().err)
    assert "NUL byte" in line and "embedded null byte" not in line


def test_a_checkpoint_option_with_a_nul_byte(animals, tmp_path, capsys):
    from trainer import evaluation as teval
    assert teval.main(["--checkpoint", "a\0b.pth", "--shards", str(animals["val3"]), "--out",
                       str(tmp_path / "r.json")]) == 1
    assert "NUL byte" in one_error(capsys.readouterr().err)


def test_a_received_file_name_with_a_nul_byte(tmp_path, weights_file, capsys):
    """From the command line (argv): one line; through the API: that file's error, the others answered."""
    from PIL import Image

    from tests.conftest import synthetic_rgb
    from receiver import predict
    good = tmp_path / "good.jpg"
    Image.fromarray(synthetic_rgb(224, 224, seed=1)).save(good)
    rc = predict.main(["--model", str(weights_file), "--arch", ARCH, "--device", "cpu", "bad\0.jpg", str(good)])
    assert rc == 1 and "NUL byte" in one_error(capsys.readouterr().err)
    from receiver.core import Receiver
    from receiver.zoo import load_single
    preds = Receiver(load_single(str(weights_file), ARCH)).predict_files(["bad\0.jpg", good])
    assert "NUL byte" in preds[0].error and preds[1].error is None and preds[1].codec == "jpeg"


def test_pipeline_paths_with_a_nul_byte(image_folder, tmp_path):
    from pipeline.build import BuildError, build
    src, split = image_folder
    for kw in ({"out": str(tmp_path / "o\0x")}, {"classes_file": "c\0.txt"}):
        with pytest.raises(BuildError, match="NUL byte"):
            build(kw.pop("src", src), split, ["jpeg-10"], **{"out": str(tmp_path / "o"), **kw}, progress=False)


def test_every_reader_of_a_user_file_names_the_nul_byte():
    from pipeline.bounded import BoundedReadError, read_json
    from pipeline.limits import FileKindError, open_regular
    with pytest.raises(FileKindError, match="NUL byte"):
        open_regular("a\0b")
    with pytest.raises(BoundedReadError, match="NUL byte"):
        read_json("m\0.json")
