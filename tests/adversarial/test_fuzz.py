"""Property-based fuzzing of the readers of user files and options: every input either
succeeds or raises the project's one-line user error, and none hangs, recurses or
allocates beyond a bound (a deadline per example, an address-space-free check: the
inputs claim sizes far beyond memory, so an allocation from them fails the example)."""
from __future__ import annotations

import contextlib
import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

from trainer.clitools import USER_ERRORS, UserError

FUZZ = settings(max_examples=40, deadline=3000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: JSON values, nested a little
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                           max_size=4), max_leaves=12)
#: texts a hostile file may hold: JSON of any shape, deep brackets, huge numbers, raw bytes
hostile = st.one_of(
    values.map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(4000, 20000).map(lambda n: '{"count": ' + "9" * n + "}"),
    st.just('{"count": NaN}'), st.just('{"count": 1e999}'),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Import and first-call costs (torch, the method registry) outside the deadlines."""
    import trainer.training  # noqa: F401
    from trainer.reports.results import load_results  # noqa: F401
    from trainer.config import TrainConfig
    TrainConfig(shards=["x.tar"], out="runs/x", device="cpu").resolved()


#: one folder for the whole module (pytest's, removed with its other temporary folders): each
#: example overwrites the file the one before wrote
_FOLDER: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def fuzz_folder(tmp_path_factory):
    _FOLDER[:] = [tmp_path_factory.mktemp("fuzz")]
    yield
    _FOLDER.clear()


def _write(text: str) -> Path:
    p = _FOLDER[0] / "manifest.json"
    p.write_text(text, encoding="utf-8", errors="surrogateescape")
    return p


def _one_line(exc: BaseException) -> None:
    assert str(exc).strip() and "\n" not in str(exc).strip(), repr(exc)


@pytest.fixture(scope="module")
def manifest_dict(animals) -> dict:
    return json.loads((animals["val3"] / "manifest.json").read_text())


@FUZZ
@given(text=hostile)
def test_the_manifest_reader(text):
    from pipeline.manifest import Manifest, ManifestError
    from pipeline.setting import SettingError
    try:
        m = Manifest.load(_write(text))
        m.name, m.split, m.shard_counts
    except (ManifestError, SettingError) as exc:
        _one_line(exc)


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(["setting", "codec", "q", "count", "shards", "num_classes", "classes",
                                              "class_index", "label_space", "split", "mean"]), values, max_size=4))
def test_the_manifest_reader_on_edited_manifests(manifest_dict, edits):
    from pipeline.manifest import Manifest, ManifestError
    from pipeline.setting import SettingError
    try:
        m = Manifest.from_dict({**manifest_dict, **edits})
        m.name, m.split, m.shard_counts
    except (ManifestError, SettingError) as exc:
        _one_line(exc)


@FUZZ
@given(text=hostile | st.lists(st.dictionaries(st.sampled_from(["setting", "top1", "mean_bytes", "arch", "method",
                                                                 "count", "split", "group"]), values), max_size=3)
       .map(json.dumps))
def test_the_results_reader(text):
    from trainer.reports.results import ResultsError, load_results
    try:
        load_results(_write(text))
    except (ResultsError, UserError) as exc:
        _one_line(exc)


yaml_texts = st.one_of(
    st.dictionaries(st.sampled_from(["epochs", "betas", "lr", "seed", "device", "out", "shards", "batch_size",
                                     "num_classes", "workers", "amp", "method", "max_skip", "val_shards",
                                     "precision", "channels_last"]),
                    values, max_size=5).map(json.dumps),          # JSON is YAML
    st.text(max_size=200),
    st.integers(1, 2000).map(lambda n: "a: " + "[" * n + "]" * n),
    st.integers(1, 12).map(lambda n: "shards: [&a0 [x], " + ", ".join(f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]"
                                                                      for i in range(1, n)) + "]"),
)


@FUZZ
@given(text=yaml_texts)
def test_the_yaml_config(text, tmp_path):
    from trainer.config import ConfigError, TrainConfig
    p = tmp_path / "run.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        c = TrainConfig.from_yaml(p)
        c.shards = c.shards or ["x.tar"]
        c.out = c.out or "runs/x"
        c.resolved()
    except USER_ERRORS as exc:
        assert isinstance(exc, (ConfigError, UserError)), repr(exc)
        _one_line(exc)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@FUZZ
@given(members=st.lists(st.tuples(st.from_regex(r"[a-z]{1,3}(/[a-z]{1,3})?\.(cls|comp\.jpg|x)", fullmatch=True),
                                  st.binary(max_size=40)), max_size=5),
       flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 4096) | st.none(), claim=st.integers(0, 8 << 30) | st.none())
@example(members=[("a.cls", b"1")], flips=[], cut=None, claim=5 << 30)   # a 5 GB member in a 10 KB tar
def test_the_tar_reader(members, flips, cut, claim, tmp_path):
    from trainer.data.tarstream import TarError, tar_samples
    data = bytearray(_tar(members))
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    if claim is not None and len(data) >= 512:
        # the first header claims another size (up to 8 GB), with a valid checksum
        data[124:136] = b"%011o\0" % claim
        data[148:156] = b" " * 8
        data[148:156] = b"%06o\0 " % sum(data[:512])
    p = tmp_path / "shard.tar"
    p.write_bytes(bytes(data[:cut] if cut is not None else data))
    tracemalloc.start()
    try:
        for sample in tar_samples(str(p)):
            assert isinstance(sample["__key__"], str)
    except TarError as exc:
        _one_line(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < (8 << 20), f"reading a {len(data)}-byte tar allocated {peak:,} bytes"


@FUZZ
@given(value=st.binary(max_size=30) | st.integers(-2**40, 2**40).map(lambda n: str(n).encode())
       | st.integers(4000, 6000).map(lambda n: b"7" * n))
def test_the_label_parser(value):
    from trainer.data import SampleError
    from trainer.data.batch import _label
    try:
        label = _label(value)
    except SampleError as exc:
        _one_line(exc)
        return
    assert isinstance(label, int)
    assert label >= -1, "a label below -1 must be refused where it is read (a counted skip)"


OPTIONS = ["--batch-size", "--epochs", "--seed", "--lr", "--betas", "--workers", "--num-classes", "--device",
           "--max-skip", "--shuffle-buffer", "--alpha", "--method", "--train-limit", "--threads", "--weight-decay",
           "--precision"]
option_values = st.one_of(st.integers(-2**80, 2**80).map(str), st.integers(2**62, 2**80).map(str), st.floats().map(str), st.text(max_size=12),
                          st.sampled_from(["nan", "inf", "-1", "0", "1e308", "cuda", "cpu", "auto", "expert", "bf16", "fp32"]))


@FUZZ
@given(argv=st.lists(st.tuples(st.sampled_from(OPTIONS), option_values), max_size=4))
@example(argv=[("--seed", "99999999999999999999999")])
@example(argv=[("--device", "bogus")])
@example(argv=[("--num-classes", "1000000000")])
def test_the_option_parser(argv, monkeypatch, tmp_path):
    import trainer.training
    from trainer import run
    accepted = []
    monkeypatch.setattr(trainer.training, "train", lambda c: accepted.append(c.resolved()))   # never train
    args = ["--shards", "x.tar", "--out", str(tmp_path / "r")]
    for name, value in argv:
        args += [name, value] + (["0.9"] if name == "--betas" else [])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = run.main(args)
    assert status in (0, 1, 2), status
    assert "Traceback" not in err.getvalue()
    if status == 1:
        assert len([l for l in err.getvalue().splitlines() if l.startswith("error:")]) == 1, err.getvalue()
    for c in accepted:   # what the checks accept, the run can use: its seed and its device
        from trainer.distributed import resolve_device, seed_everything
        seed_everything(c.seed)
        torch.device(resolve_device(c.device))
