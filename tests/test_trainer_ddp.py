"""DDP with 2 CPU processes (gloo, torchrun): a run completes and ranks see disjoint data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.test_trainer_common import build_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    from trainer.distributed import init_distributed
    from trainer.data import LoaderSpec, group_shards, make_train_loader
    from trainer import run
    shards, out = sys.argv[1], sys.argv[2]
    d = init_distributed("cpu")
    ss = group_shards(shards + "/train/jpeg-10/*.tar")
    loader, n = make_train_loader(ss, LoaderSpec(batch_size=2, workers=1, shuffle_buffer=2), epoch=0,
                                  rank=d.rank, world=d.world)
    keys = [k for b in loader for k in b["key"]]
    allk = [None] * d.world
    dist.all_gather_object(allk, keys)
    if d.rank == 0:
        json.dump({"world": d.world, "keys": allk, "n": n}, open(out + "/keys.json", "w"))
    rc = run.main(["--shards", shards + "/train/jpeg-10/*.tar", "--val-shards", shards + "/train/jpeg-10/*.tar",
                    "--arch", "mobilenet_v3_small", "--batch-size", "2", "--workers", "1", "--epochs", "1",
                    "--lr", "1e-3", "--no-progress", "--out", out + "/run", "--device", "cpu", "--threads", "1"])
    assert rc == 0, rc
""")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    shards = build_shards(tmp_path, codecs=(("jpeg", 10),), per_class=4, shard_size=2)
    (tmp_path / "ddp.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "ddp.py"), str(shards), str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    info = json.loads((tmp_path / "keys.json").read_text())
    k0, k1 = info["keys"]
    assert info["world"] == 2 and len(k0) == len(k1) == 2 * info["n"] == 4
    assert not set(k0) & set(k1)
    ck = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ck["args"]["world_size"] == 2 and ck["epoch"] == 1
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_images"] == 8 and rows[0]["val_count"] == 8
