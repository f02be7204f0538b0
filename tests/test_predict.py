"""receiver.predict, the receiver on files: bitstreams in, top-5 out, bad files reported and skipped."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.classes import imagenet_name
from pipeline.crops import crop_image
from receiver import predict
from tests.conftest import synthetic_rgb
from trainer.models import build_model

# random weights: only the plumbing is tested.  resnet18 rather than a smaller net because
# randomly initialised mobilenets / mnasnets give (near-)constant logits, so top-5 would be ties.
ARCH = "resnet18"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A run checkpoint in trainer.run's format: {"model", "arch", "num_classes", "args"}."""
    torch.manual_seed(0)
    model = build_model(ARCH, num_classes=1000).eval()
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    torch.save({"model": model.net.state_dict(), "arch": ARCH, "num_classes": 1000,
                "args": {"method": "expert", "arch": ARCH}}, path)
    return path, model


def jpeg_bytes(rgb: np.ndarray, quality: int = 10) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def reference_probs(model, rgb: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        return model(x).softmax(1)[0].numpy()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def parse_top(text: str, file: str) -> list[tuple[float, str, int]]:
    """(prob %, name, index) lines printed under ``file``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(file + ":"))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        _rank, pct, rest = line.split(maxsplit=2)
        name, index = rest.rsplit(" (", 1)
        out.append((float(pct.rstrip("%")), name, int(index.rstrip(")"))))
    return out


def test_jpeg_top5_with_imagenet_names(tmp_path, checkpoint, capsys):
    path, model = checkpoint
    data = jpeg_bytes(synthetic_rgb(224, 224, seed=3))
    f = tmp_path / "received.bin"  # no extension: detection is by content
    f.write_bytes(data)
    # fp32: the receiver's decode and forward equal the float32 reference to the printed digit
    rc = predict.main(["--model", str(path), "--device", "cpu", "--precision", "fp32", str(f)])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"{f}: jpeg, {len(data)} bytes, 224x224" in out and "CenterCrop" not in out
    top = parse_top(out, str(f))
    assert len(top) == 5
    probs = reference_probs(model, decoded(data))
    assert [t[2] for t in top] == list(np.argsort(-probs)[:5])
    for pct, name, index in top:
        assert name == imagenet_name(index)
        assert pct == pytest.approx(100 * probs[index], abs=0.006)


def test_undecodable_file_is_reported_and_others_still_classified(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(synthetic_rgb(224, 224)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image at all")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg_bytes(synthetic_rgb(224, 224, seed=1))[:40])
    missing = tmp_path / "missing.jpg"
    rc = predict.main(["--model", str(path), "--device", "cpu", str(bad), str(good), str(truncated), str(missing)])
    captured = capsys.readouterr()
    assert rc == 1
    assert f"error: {bad}: not a bitstream of any known codec" in captured.err
    assert f"error: {truncated}:" in captured.err
    assert f"error: {missing}: cannot read" in captured.err
    assert "3 of 4 files could not be classified" in captured.err
    assert len(parse_top(captured.out, str(good))) == 5


def test_json_output(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    good = tmp_path / "a.jpg"
    good.write_bytes(jpeg_bytes(synthetic_rgb(224, 224)))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\x00" * 10)
    rc = predict.main(["--model", str(path), "--device", "cpu", "--json", "--topk", "3", str(good), str(bad)])
    result = json.loads(capsys.readouterr().out)
    assert rc == 1 and [r["file"] for r in result] == [str(good), str(bad)]
    assert result[0]["codec"] == "jpeg" and result[0]["error"] is None and len(result[0]["top"]) == 3
    assert result[0]["top"][0]["name"] == imagenet_name(result[0]["top"][0]["index"])
    assert result[1]["error"] and result[1]["top"] == []


def test_other_sizes_get_resize_and_center_crop(tmp_path, checkpoint, capsys):
    from pipeline.crops import crop_image

    path, model = checkpoint
    data = jpeg_bytes(synthetic_rgb(240, 300, seed=5), quality=90)
    f = tmp_path / "big.jpg"
    f.write_bytes(data)
    rc = predict.main(["--model", str(path), "--device", "cpu", str(f)])
    out = capsys.readouterr().out
    assert rc == 0 and "300x240 -> Resize(256)+CenterCrop(224)" in out
    probs = reference_probs(model, crop_image(Image.open(io.BytesIO(data))))
    assert [t[2] for t in parse_top(out, str(f))] == list(np.argsort(-probs)[:5])


def test_plain_weights_need_arch_and_small_heads_use_indices(tmp_path, capsys):
    torch.manual_seed(1)
    model = build_model(ARCH, num_classes=10).eval()
    weights = tmp_path / "w.pth"
    torch.save(model.net.state_dict(), weights)
    img = tmp_path / "x.jpg"
    img.write_bytes(jpeg_bytes(synthetic_rgb(224, 224)))
    assert predict.main(["--model", str(weights), "--device", "cpu", str(img)]) == 1
    assert "give --arch" in capsys.readouterr().err
    rc = predict.main(["--model", str(weights), "--arch", ARCH, "--device", "cpu", str(img)])
    top = parse_top(capsys.readouterr().out, str(img))
    assert rc == 0 and len(top) == 5 and all(name == f"class {i}" for _, name, i in top)
    assert predict.main([str(img)]) == 2  # neither --model nor --weights


@pytest.mark.parametrize("codec, q", [("j2k", 50), ("bpg", 41)])
def test_other_codecs_detected_by_content(tmp_path, checkpoint, capsys, codec, q):
    from pipeline.codecs import create

    # both codecs are part of the project (glymur/OpenJPEG, PyAV's x265): an encoder that does
    # not work here is a failure, not a reason to skip the receiver's path
    data = create(codec, q).encode(synthetic_rgb(224, 224))
    path, model = checkpoint
    f = tmp_path / "received.jpg"  # a misleading extension on purpose
    f.write_bytes(data)
    rc = predict.main(["--model", str(path), "--device", "cpu", str(f)])
    out = capsys.readouterr().out
    assert rc == 0 and f"{f}: {codec}, {len(data)} bytes, 224x224" in out
    # the receiver decodes the bitstream as the codec does and classifies those pixels
    probs = reference_probs(model, create(codec, q).decode(data))
    assert [t[2] for t in parse_top(out, str(f))] == list(np.argsort(-probs)[:5])


def test_the_receiver_reads_a_bitstreams_headers_once(monkeypatch):
    """One content sniff per received bitstream: the probe's codec decodes it."""
    from pipeline.codecs import base, decode_any
    from receiver.core import Receiver
    from receiver.zoo import Zoo

    sniffs = []
    real = base.detect
    monkeypatch.setattr(base, "detect", lambda data: sniffs.append(len(data)) or real(data))
    data = jpeg_bytes(synthetic_rgb(240, 300, seed=4))
    expert, x, pred = Receiver(Zoo.single(None, {}, "model")).receive(data, "body")
    assert sniffs == [len(data)] and expert.name == "model" and pred.route is None
    assert pred.codec == "jpeg" and pred.received_size == [300, 240] and pred.cropped and x.shape == (224, 224, 3)
    np.testing.assert_array_equal(x, crop_image(Image.fromarray(decode_any(data))))
