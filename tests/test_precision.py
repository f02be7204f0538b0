"""``--precision auto|fp32|bf16`` (trainer/precision.py): what auto picks with the CPU's flags
faked both ways (and a CUDA GPU faked), the one-line refusal of bf16 where the device has none
(Python API and every command), fp32 loss terms under bf16 autocast, a real bf16 forward where
the CPU has native bf16, and where the choice is recorded: the eval cache's key and rows, the
teacher cache's name, a run's args and checkpoints; old run folders (``amp``) still load."""
from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from tests.trainer_helpers import build_shards
from trainer import EvalConfig, TrainConfig, evaluate, precision, train
from trainer.config import ConfigError
from trainer.eval_cache import Summary
from trainer.losses import ExpertLoss, StabilityLoss
from trainer.models import build_model
from trainer.precision import PrecisionError, resolve

ARCH = "mobilenet_v3_small"
WITH_BF16 = frozenset({"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
WITHOUT_BF16 = frozenset({"fpu", "sse2", "avx2", "avx512f"})
NATIVE, WHY = precision.native_bf16("cpu")


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: WITH_BF16)


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: WITHOUT_BF16)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    torch.set_num_threads(1)
    return build_shards(tmp_path_factory.mktemp("prec"), codecs=(("jpeg", 10),), per_class=1, shard_size=2,
                        splits=("train", "val"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "w.pth"
    torch.save(build_model(ARCH, None, 1000).net.state_dict(), path)
    return path


def tiny_net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, classes))


# -- the choice ------------------------------------------------------------------------------------
def test_the_cpu_flags_are_read_from_cpuinfo():
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16\n\nprocessor\t: 1\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert precision.parse_flags(x86) == {"fpu", "sse2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert "bf16" in precision.parse_flags(arm)
    assert precision.parse_flags("model name\t: some CPU\n") is None


def test_auto_is_bf16_and_channels_last_on_a_cpu_that_reports_bf16(cpu_with_bf16):
    p = resolve("auto", "cpu")
    assert (p.name, p.device_type, p.channels_last, p.choice) == ("bf16", "cpu", True, "auto")
    assert p.dtype is torch.bfloat16 and "amx_bf16" in p.reason and "avx512_bf16" in p.reason
    lin = nn.Linear(4, 3)
    with p.autocast():
        assert lin(torch.randn(2, 4)).dtype is torch.bfloat16        # autocast is on
    assert "bf16 autocast, channels_last" in p.describe() and "--precision auto" in p.describe()
    assert resolve("bf16", "cpu").name == "bf16" and resolve("fp32", "cpu").name == "fp32"


def test_auto_is_fp32_nchw_on_a_cpu_without_bf16(cpu_without_bf16):
    p = resolve("auto", "cpu")
    assert (p.name, p.channels_last, p.dtype) == ("fp32", False, None)
    lin = nn.Linear(4, 3)
    with p.autocast():
        assert lin(torch.randn(2, 4)).dtype is torch.float32
    model = p.prepare(nn.Conv2d(3, 8, 3))
    assert model.weight.is_contiguous()             # NCHW kept: an fp32 run repeats the earlier ones


def test_bf16_on_a_cpu_without_it_is_one_line_naming_the_device(cpu_without_bf16):
    with pytest.raises(PrecisionError) as e:
        resolve("bf16", "cpu")
    text = str(e.value)
    assert "\n" not in text and "--precision bf16" in text and "device cpu" in text and "avx512_bf16" in text
    assert e.value.exit_code == 2


def test_unknown_choice_is_refused():
    with pytest.raises(PrecisionError, match="choose from auto, fp32, bf16"):
        resolve("fp16", "cpu")


def test_cuda_is_decided_by_its_own_probe(monkeypatch, cpu_without_bf16):
    monkeypatch.setattr(precision, "cuda_bf16", lambda: (True, "Fake GPU supports bf16"))
    p = resolve("auto", "cuda")
    assert (p.name, p.device_type, p.channels_last, p.reason) == ("bf16", "cuda", True, "Fake GPU supports bf16")
    assert resolve("auto", "cpu").name == "fp32"            # the CPU's own flags still say no
    monkeypatch.setattr(precision, "cuda_bf16", lambda: (False, "Old GPU does not support bf16"))
    p = resolve("auto", "cuda")
    assert (p.name, p.channels_last) == ("fp32", True)       # fp32 on CUDA: cuDNN's channels_last, as before
    with pytest.raises(PrecisionError, match=r"device cuda:0 has no native bf16 \(Old GPU"):
        resolve("bf16", "cuda:0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: its probe is not 'none visible'")
def test_the_cuda_probe_without_a_gpu():
    assert precision.cuda_bf16() == (False, "no CUDA GPU is visible")


def test_a_resolved_precision_passes_through_and_is_re_resolved_for_another_device(cpu_with_bf16, monkeypatch):
    p = resolve("auto", "cpu")
    assert resolve(p, "cpu") is p
    monkeypatch.setattr(precision, "cuda_bf16", lambda: (False, "no"))
    assert resolve(p, "cuda").name == "fp32"     # auto again, on the other device


# -- numerics ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not NATIVE, reason=f"this CPU has no native bf16 ({WHY})")
def test_a_bf16_forward_on_this_cpu_runs_and_agrees_with_fp32():
    p = resolve("bf16", "cpu")
    net = tiny_net().eval()
    x = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        fast = p.prepare(net)
        assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
        with p.autocast():
            out = fast(p.layout(x))
    assert out.dtype is torch.bfloat16          # it ran in bf16, not silently in fp32
    err = (out.float() - ref).abs().max().item()
    assert err <= 0.02 * ref.abs().max().item() + 1e-2, err
    assert not torch.equal(out.float(), ref)     # and bf16 rounding is visible: the comparison can fail


def test_the_loss_terms_are_fp32_under_bf16_autocast(cpu_with_bf16):
    p = resolve("bf16", "cpu")
    torch.manual_seed(0)
    student = (3 * torch.randn(6, 10)).bfloat16().requires_grad_()
    teacher = (3 * torch.randn(6, 10)).half()                    # the cache's float16 rows
    y = torch.tensor([0, 1, 2, 3, -1, 9])
    loss = ExpertLoss(1e-2, "sum")
    with p.autocast():
        terms = loss(student, teacher, y)
        stab = StabilityLoss(5e-3)(student, student * 0.5, y)
    ref = loss(student.detach().float(), teacher.float(), y)
    for t in (terms, stab):
        assert {k: v.dtype for k, v in t.items()} == dict.fromkeys(("loss", "ce", "kl"), torch.float32)
    assert torch.equal(terms["kl"], ref["kl"]) and torch.equal(terms["ce"], ref["ce"])
    terms["loss"].backward()
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()


def test_the_expert_step_in_bf16_gives_fp32_terms_and_fp32_weights(cpu_with_bf16):
    from trainer import loop, methods
    p = resolve("bf16", "cpu")
    method = methods.create(TrainConfig(shards=["-"], out="-", method="expert", arch=ARCH).resolved())
    model = p.prepare(tiny_net(1000).train())
    step = loop.Step(method=method, device=torch.device("cpu"), precision=p)
    batch = {"comp": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), "label": torch.tensor([1, 2, 3, 4]),
             "teacher": torch.randn(4, 1000).half()}
    terms = method.loss(model, batch, step)
    assert all(v.dtype is torch.float32 for v in terms.values())
    terms["loss"].backward()
    assert all(q.dtype is torch.float32 and q.grad.dtype is torch.float32 for q in model.parameters())


# -- where the choice is recorded ----------------------------------------------------------------------
def _eval(shards, weights, tmp_path, prec):
    summary = Summary()
    rows = evaluate(EvalConfig(arch=ARCH, weights=[str(weights)], shards=[str(shards / "val" / "jpeg-10" / "*.tar")],
                               out=str(tmp_path / "results.json"), workers=0, progress=False, precision=prec),
                    summary=summary)
    return rows, summary


def test_bf16_and_fp32_evaluations_never_share_an_eval_cache_entry(cpu_with_bf16, shards, weights, tmp_path):
    rows, s = _eval(shards, weights, tmp_path, "fp32")
    assert [r["precision"] for r in rows] == ["fp32"] and len(s.computed) == 1 and not s.reused
    rows, s = _eval(shards, weights, tmp_path, "bf16")
    assert [r["precision"] for r in rows] == ["bf16"] and len(s.computed) == 1 and not s.reused
    entries = list((tmp_path / "eval-cache").glob("*.json"))
    assert len(entries) == 2
    assert sorted(json.loads(e.read_text())["key"]["options"]["precision"] for e in entries) == ["bf16", "fp32"]
    rows, s = _eval(shards, weights, tmp_path, "auto")             # auto picks bf16 here: its entry is reused
    assert [r["precision"] for r in rows] == ["bf16"] and len(s.reused) == 1 and not s.computed
    rows, s = _eval(shards, weights, tmp_path, "fp32")
    assert [r["precision"] for r in rows] == ["fp32"] and len(s.reused) == 1 and not s.computed
    written = json.loads((tmp_path / "results.json").read_text())
    assert [r["precision"] for r in written] == ["fp32"]           # the column of results.json


def test_a_run_records_its_precision_in_args_and_checkpoints(cpu_without_bf16, shards, tmp_path, caplog):
    out = tmp_path / "r"
    with caplog.at_level(logging.INFO, logger="trainer.run"):
        train(TrainConfig(shards=[str(shards / "train" / "jpeg-10" / "*.tar")], arch=ARCH, num_classes=1000,
                          batch_size=2, workers=0, shuffle_buffer=2, progress=False, epochs=1, lr=1e-3, out=str(out),
                          method="finetune", teacher_cache="off"))
    assert any("precision fp32 on cpu" in r.getMessage() and "--precision auto" in r.getMessage()
               for r in caplog.records)
    from trainer.config import read_yaml
    assert read_yaml(out / "args.yaml")["precision"] == "fp32"          # what auto picked, as workers
    args = json.loads((out / "args.json").read_text())
    assert (args["precision"], args["precision_choice"]) == ("fp32", "auto")
    ck = torch.load(out / "last.pth", weights_only=True)
    assert ck["precision"] == "fp32" and ck["args"]["precision"] == "fp32"


def test_the_teacher_cache_of_one_precision_is_never_read_by_a_run_in_the_other(cpu_with_bf16, shards, tmp_path):
    from trainer.data import group_shards
    from trainer.models import state_dict_hash
    from trainer.teacher_cache import CacheError, cache_path, resolve_caches, validate
    sets = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    teacher = tiny_net(1000).eval()      # logits of a visible size (a random mobilenet's are ~1e-9)
    wh = state_dict_hash(teacher)
    root = tmp_path / "cache"
    f32, b16 = resolve("fp32", "cpu"), resolve("bf16", "cpu")
    resolve_caches(sets, teacher, ARCH, None, mode=str(root), precision=f32)
    resolve_caches(sets, teacher, ARCH, None, mode=str(root), precision=b16)
    p32, p16 = cache_path(sets[0], ARCH, wh, root, "fp32"), cache_path(sets[0], ARCH, wh, root, "bf16")
    assert p32.name.endswith("-fp32.npy") and p16.name.endswith("-bf16.npy") and p32.exists() and p16.exists()
    assert validate(p32, sets[0], ARCH, wh, "fp32") is None and validate(p16, sets[0], ARCH, wh, "bf16") is None
    assert validate(p32, sets[0], ARCH, wh, "bf16") == "computed in fp32, this run is bf16"
    assert json.loads(p16.with_suffix(".json").read_text())["precision"] == "bf16"
    a, b = np.load(p32).astype(np.float32), np.load(p16).astype(np.float32)
    assert not np.array_equal(a, b)             # the teacher did run in bf16 for one of them
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max() + 0.05
    # a file the user names, computed in the other precision, is refused (not overwritten)
    with pytest.raises(CacheError, match="computed in fp32, this run is bf16"):
        resolve_caches(sets, teacher, ARCH, None, mode=str(p32), precision=b16)
    assert validate(p32, sets[0], ARCH, wh, "fp32") is None
    # a cache from before the precision was recorded is not read
    meta = json.loads(p32.with_suffix(".json").read_text())
    del meta["precision"]
    p32.with_suffix(".json").write_text(json.dumps(meta))
    assert "unrecorded precision" in validate(p32, sets[0], ARCH, wh, "fp32")


# -- old run folders ---------------------------------------------------------------------------------
OLD_ARGS = """shards: [{shards}]
method: finetune
arch: {arch}
num_classes: 1000
batch_size: 2
workers: 0
shuffle_buffer: 2
epochs: {epochs}
lr: 0.001
out: {out}
progress: false
device: cpu
amp: {amp}
channels_last: true
"""


@pytest.mark.parametrize("amp, extra, want", [("true", "", "auto"), ("false", "", "fp32"),
                                              ("false", "precision: bf16\n", "bf16")])
def test_an_old_args_yaml_with_amp_loads_with_a_note(tmp_path, caplog, cpu_with_bf16, amp, extra, want):
    p = tmp_path / "args.yaml"
    p.write_text(OLD_ARGS.format(shards="x.tar", arch=ARCH, epochs=1, out=tmp_path / "r", amp=amp) + extra)
    with caplog.at_level(logging.WARNING, logger="trainer.precision"):
        c = TrainConfig.from_yaml(p)
    assert c.precision == want and not hasattr(c, "amp")
    note = " ".join(r.getMessage() for r in caplog.records)
    assert f"amp: {amp}" in note and "channels_last: true" in note and f"read as precision {want}" in note
    assert c.resolved().precision == want


def test_an_old_eval_config_with_amp_loads():
    assert EvalConfig.from_dict({"shards": ["x.tar"], "amp": False}).precision == "fp32"
    assert EvalConfig.from_dict({"shards": ["x.tar"], "amp": True}).precision == "auto"


def test_an_old_amp_of_the_wrong_type_is_one_line(tmp_path):
    p = tmp_path / "args.yaml"
    p.write_text("amp: yes please\n")
    with pytest.raises(ConfigError, match="amp: expected true or false"):
        TrainConfig.from_yaml(p)


def test_an_old_run_resumes_and_repeats_from_its_args_yaml(cpu_without_bf16, shards, tmp_path):
    """A run folder from before --precision (amp / channels_last in args.yaml and in the
    checkpoint's args, no precision key): --config args.yaml --resume auto continues it."""
    from trainer import run
    out = tmp_path / "old"
    assert run.main(["--shards", str(shards / "train" / "jpeg-10" / "*.tar"), "--arch", ARCH, "--num-classes", "1000",
                     "--batch-size", "2", "--workers", "0", "--shuffle-buffer", "2", "--no-progress", "--epochs", "1",
                     "--lr", "1e-3", "--method", "finetune", "--out", str(out)]) == 0
    ck = torch.load(out / "last.pth", weights_only=True)         # made old: what it held before the option
    del ck["precision"]
    ck["args"] = {**{k: v for k, v in ck["args"].items() if not k.startswith("precision")}, "amp": True,
                  "channels_last": True}
    torch.save(ck, out / "last.pth")
    (out / "args.yaml").write_text(OLD_ARGS.format(shards=shards / "train" / "jpeg-10" / "*.tar", arch=ARCH,
                                                   epochs=2, out=out, amp="true"))
    assert run.main(["--config", str(out / "args.yaml"), "--resume", "auto"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert torch.load(out / "last.pth", weights_only=True)["precision"] == "fp32"


# -- every command: bf16 where the CPU has none is one error line, exit status 2 ------------------------
def _commands(tmp_path):
    from receiver import predict, serve
    from trainer import evaluation as teval, run, teacher_cache
    pic = tmp_path / "x.jpg"
    pic.write_bytes(b"\xff\xd8\xff")
    return {
        "trainer.run": lambda: run.main(["--shards", "x.tar", "--out", str(tmp_path / "r"), "--precision", "bf16"]),
        "trainer.eval": lambda: teval.main(["--shards", "x.tar", "--arch", ARCH, "--weights", "DEFAULT",
                                            "--precision", "bf16"]),
        "teacher_cache": lambda: teacher_cache.main(["--shards", "x.tar", "--arch", ARCH, "--precision", "bf16"]),
        "predict": lambda: predict.main(["--model", "m.pth", "--device", "cpu", "--precision", "bf16", str(pic)]),
        "m2m-serve": lambda: serve.main(["--default", "pretrained", "--arch", ARCH, "--precision", "bf16"]),
    }


@pytest.mark.parametrize("command", ["trainer.run", "trainer.eval", "teacher_cache", "predict", "m2m-serve"])
def test_bf16_on_a_cpu_without_it_is_one_error_line_and_exit_2(cpu_without_bf16, tmp_path, command):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = _commands(tmp_path)[command]()
    lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert status == 2, err.getvalue()
    assert len(lines) == 1 and "--precision bf16" in lines[0] and "device cpu" in lines[0], err.getvalue()
    assert "Traceback" not in err.getvalue() and not (tmp_path / "r").exists()
