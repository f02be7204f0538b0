"""DDP with 2 CPU processes (gloo, torchrun): a run completes and ranks see disjoint data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.trainer_helpers import build_shards

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


# -- the trainer on many nodes ---------------------------------------------------
NODE_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    from trainer.distributed import init_distributed
    from trainer.data import LoaderSpec, group_shards, make_train_loader
    from trainer import run
    shards, out, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    d = init_distributed("cpu")
    ss = group_shards(shards + "/train/jpeg-10/*.tar")
    keys = []
    for epoch in (0, 1):   # the trainer's default shuffle buffer, a loader worker per rank
        loader, n = make_train_loader(ss, LoaderSpec(batch_size=2, workers=1, shuffle_buffer=1000), epoch=epoch,
                                      rank=d.rank, world=d.world)
        keys.append([k for b in loader for k in b["key"]])
    allk = [None] * d.world
    dist.all_gather_object(allk, keys)
    if d.rank == 0:
        json.dump({"world": d.world, "keys": allk}, open(out + "/keys.json", "w"))
    assert run.main(args) == 0
""")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_see_the_epoch_once_and_train_as_one_process_with_twice_the_batch(tmp_path):
    """``torchrun --nnodes 2 --nproc-per-node 1`` twice on the loopback (gloo): two "nodes" of
    one rank each.  The ranks read disjoint samples whose union is the epoch, and the run's
    metrics and weights equal those of one process with twice the per-rank batch.

    Why equality holds here: stability training (head only) keeps the frozen layers in eval
    mode, so no batch statistic depends on how a batch is split; with --sigma 0 its KL term is
    0 and the loss is the batch-mean CE, whose DDP-averaged gradient over two halves of 2 is
    the gradient over the whole 4.  With --shuffle-buffer 1 the 1-process batch i is the
    union of the two ranks' batches i (shard s0+s1, then s2+s3, by the epoch plan)."""
    shards = build_shards(tmp_path, codecs=(("jpeg", 10),), per_class=4, shard_size=2)
    (tmp_path / "node.py").write_text(NODE_SCRIPT)

    def run_args(out, batch):
        return ["--shards", str(shards / "train" / "jpeg-10" / "*.tar"), "--val-shards",
                str(shards / "train" / "jpeg-10" / "*.tar"), "--method", "stability", "--sigma", "0",
                "--arch", "resnet18", "--num-classes", "1000", "--batch-size", str(batch), "--val-batch-size", "3",
                "--workers", "0", "--shuffle-buffer", "1", "--epochs", "2", "--lr", "1e-2", "--seed", "4",
                "--no-progress", "--out", str(out), "--device", "cpu", "--precision", "fp32", "--threads", "1"]

    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(r), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               str(tmp_path / "node.py"), str(shards), str(tmp_path),
                               json.dumps(run_args(tmp_path / "two", 2))],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(o[-3000:] for o in outs)

    info = json.loads((tmp_path / "keys.json").read_text())
    assert info["world"] == 2
    every = sorted(f"{c}/{c}_{i:04d}_JPEG" for c in ("n01440764", "n02102040") for i in range(4))
    for epoch in (0, 1):
        k0, k1 = info["keys"][0][epoch], info["keys"][1][epoch]
        assert len(k0) == len(k1) == 4 and not set(k0) & set(k1) and sorted(k0 + k1) == every, epoch

    from trainer import run
    assert run.main(run_args(tmp_path / "one", 4)) == 0
    two = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(two) == len(one) == 2
    for a, b in zip(two, one):
        assert a["train_images"] == b["train_images"] == 8 and a["val_count"] == b["val_count"] == 8
        for k in ("train_loss", "train_ce", "val_loss", "val_top1", "val_top5", "lr"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    assert two[1]["train_loss"] != pytest.approx(two[0]["train_loss"], rel=1e-3)   # the head did learn
    w2 = torch.load(tmp_path / "two" / "last.pth", weights_only=True)
    w1 = torch.load(tmp_path / "one" / "last.pth", weights_only=True)
    assert w2["args"]["world_size"] == 2 and w1["args"]["world_size"] == 1
    for k in ("fc.weight", "fc.bias"):
        assert torch.allclose(w2["model"][k], w1["model"][k], rtol=1e-4, atol=1e-6), k
    init = torch.load(tmp_path / "one" / "last.pth", weights_only=True)["model"]["layer1.0.conv1.weight"]
    assert torch.equal(w2["model"]["layer1.0.conv1.weight"], init)              # frozen layers untouched
