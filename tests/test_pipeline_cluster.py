"""Cluster builds: node ranks + the manifest step, a Dask cluster, killed workers.

Every way of building writes the same bytes as one local run.  Manifests are compared
without ``created`` and ``timing_ms_mean`` (when and how fast it ran: the only keys that
differ); ``manifest.csv`` without its timing columns."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.__main__ import cli
from pipeline.build import IncompleteError, build, write_manifest
from pipeline.manifest import TIMINGS, VOLATILE
from tests.conftest import ROOT, make_image_folder

CLASSES = ("n01440764", "n02102040", "n02979186")
SETTINGS = ["jpeg-10", "j2k-200"]


@pytest.fixture
def source(tmp_path):
    make_image_folder(tmp_path / "src", classes=CLASSES, per_class=3)
    return tmp_path / "src", "train"


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


def _manifest(folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in VOLATILE}


def _csv(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(f)]


def assert_same_build(a: Path, b: Path, names) -> None:
    for name in names:
        fa, fb = a / name, b / name
        assert _tars(fa) == _tars(fb) and _tars(fa), name
        assert _manifest(fa) == _manifest(fb), name
        assert _csv(fa) == _csv(fb), name
        assert not list(fa.glob(".shard-*")) and not list((fa / "records").glob(".shard-*")), name


@pytest.fixture
def local_build(source, tmp_path):
    src, split = source
    build(src, split, SETTINGS, tmp_path / "local", shard_size=2, jobs=1, layout="split", progress=False)
    return tmp_path / "local" / split


# -- 2: node ranks and the manifest step ---------------------------------------------------------------

def test_node_ranks_and_the_manifest_step_equal_a_local_run(source, tmp_path, local_build):
    src, split = source
    out = tmp_path / "ranks"
    first = build(src, split, SETTINGS, out, shard_size=2, layout="split", num_nodes=2, node_rank=1, progress=False)
    assert first == {"lossless": None, "jpeg-10": None, "j2k-200": None}
    folder = out / split / "jpeg-10"
    assert sorted(p.name for p in folder.glob("shard-*.tar")) == ["shard-000001.tar", "shard-000003.tar"]
    with pytest.raises(IncompleteError, match=r"3 of 5 shard\(s\) missing.*rank 0 of 2: shard-000000.tar, "
                                              r"shard-000002.tar, shard-000004.tar"):
        write_manifest(folder)
    r = CliRunner().invoke(cli, ["manifest", str(folder)])
    assert r.exit_code == 1 and "rank 0 of 2" in r.output and "Traceback" not in r.output
    # the last rank finds every shard present and writes the manifests itself
    last = build(src, split, SETTINGS, out, shard_size=2, layout="split", num_nodes=2, node_rank=0, progress=False)
    assert all(m is not None for m in last.values())
    assert_same_build(out / split, local_build, ["lossless"] + SETTINGS)
    # and the manifest step on its own writes the same manifest
    (folder / "manifest.json").unlink()
    r = CliRunner().invoke(cli, ["manifest", "--verify", str(folder)])
    assert r.exit_code == 0, r.output
    assert_same_build(out / split, local_build, SETTINGS)


def test_cli_ranks(source, tmp_path, local_build):
    src, split = source
    args = ["shards", "--settings", ",".join(SETTINGS), "--layout", "split", "--src", str(src), "--split", split,
            "--out", str(tmp_path / "cli"), "--shard-size", "2", "--num-nodes", "2", "--no-progress"]
    r0 = CliRunner().invoke(cli, args + ["--node-rank", "0"])
    assert r0.exit_code == 0 and "the manifest is written by the last rank" in r0.output, r0.output
    r1 = CliRunner().invoke(cli, args + ["--node-rank", "1"])
    assert r1.exit_code == 0 and "train/jpeg-10: 9 images in 5 shards" in r1.output, r1.output
    assert_same_build(tmp_path / "cli" / split, local_build, ["lossless"] + SETTINGS)


# -- 4: a killed build leaves no partial tar and re-runs to the same bytes ------------------------------

def _wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.005)
    raise AssertionError("timed out")


def _partial(folder: Path):
    return [p for p in folder.glob(".shard-*.tar.*.tmp") if p.stat().st_size > 0]


def test_a_rank_killed_mid_shard_reruns_to_the_same_bytes(source, tmp_path, local_build):
    src, split = source
    out = tmp_path / "killed"
    folder = out / split / "lossless"            # big samples: its temporary tar grows visibly
    cmd = [sys.executable, "-m", "pipeline", "shards", "--settings", ",".join(SETTINGS), "--layout", "split",
           "--src", str(src), "--split", split, "--out", str(out), "--shard-size", "2", "--jobs", "1",
           "--num-nodes", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (folder / "shard-000000.tar").exists() and _partial(folder))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _partial(folder)                                  # killed mid-shard: a temporary file ...
    reference = _tars(local_build / "lossless")
    for name, data in _tars(folder).items():                 # ... and only complete tars under final names
        assert data == reference[name]
    assert len(_tars(folder)) < len(reference)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert_same_build(out / split, local_build, ["lossless"] + SETTINGS)


# -- 1 and 3: Dask -------------------------------------------------------------------------------------

def test_dask_backend_without_dask_says_how_to_install(source, tmp_path, monkeypatch):
    src, split = source
    monkeypatch.setitem(sys.modules, "distributed", None)      # import distributed -> ImportError
    r = CliRunner().invoke(cli, ["shards", "--codec", "jpeg", "--q", "10", "--src", str(src), "--split", split,
                                 "--out", str(tmp_path / "o"), "--backend", "dask", "--scheduler", "tcp://x:8786"])
    assert r.exit_code == 1 and "pip install -e .[cluster]" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_dask_local_cluster_equals_a_local_run_even_when_workers_die(source, tmp_path, local_build, caplog):
    """Two worker processes on the loopback interface; a first build as is, a second one with
    both workers killed (SIGKILL) while they write shards: Dask's nannies restart them, the
    scheduler re-runs their shards, and the bytes are those of a local run."""
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is the `cluster` extra")
    src, split = source
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with caplog.at_level("INFO", logger="pipeline"):
            build(src, split, SETTINGS, tmp_path / "dask", shard_size=2, layout="split", backend="dask",
                  scheduler=cluster.scheduler_address, progress=False)
        assert_same_build(tmp_path / "dask" / split, local_build, ["lossless"] + SETTINGS)
        assert sum("done (" in r.getMessage() for r in caplog.records) == 5      # progress per shard

        pids = list(client.run(os.getpid).values())
        folder = tmp_path / "dask2" / split / "lossless"
        errors = []

        def run():
            try:
                build(src, split, SETTINGS, tmp_path / "dask2", shard_size=2, layout="split", backend="dask",
                      scheduler=cluster.scheduler_address, progress=False)
            except Exception as exc:  # reported below
                errors.append(exc)
        t = threading.Thread(target=run)
        t.start()
        _wait_for(lambda: _partial(folder))
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        t.join(timeout=120)
        assert not t.is_alive() and errors == []
        assert set(client.run(os.getpid).values()).isdisjoint(pids)   # the workers were really replaced
    assert_same_build(tmp_path / "dask2" / split, local_build, ["lossless"] + SETTINGS)


def test_workers_read_the_pixel_budget_from_the_job(source, tmp_path, monkeypatch):
    """Remote workers do not share the client's environment: the budget travels with the job."""
    import pipeline.shards as shards_mod

    from pipeline.limits import DecodeBudget

    src, split = source
    monkeypatch.delenv("M2M_MAX_PIXELS", raising=False)
    seen = []
    original = shards_mod.load_crop
    monkeypatch.setattr(shards_mod, "load_crop", lambda path, budget: seen.append(budget) or original(path, budget=budget))
    m = build(src, split, ["jpeg-10"], tmp_path, shard_size=100, budget=DecodeBudget(max_pixels=50_000),
              progress=False)["jpeg-10"]
    assert {b.max_pixels for b in seen} == {50_000} and m["count"] == 0
    assert "pixel budget" in m["failed"][0]["reason"]
    assert "M2M_MAX_PIXELS" not in os.environ            # the caller's environment is left alone
