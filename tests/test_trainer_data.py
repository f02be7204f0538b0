"""Streaming loader: equal batches, rank splits, decoding choices, determinism."""
from __future__ import annotations

import pytest
import torch

from tests.trainer_helpers import build_shards
from trainer.data import LoaderSpec, ShardError, group_shards, make_eval_loader, make_train_loader
from trainer.data import expand_shards

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 8 samples per setting, 4 shards of 2
    return build_shards(tmp_path_factory.mktemp("data"), per_class=4, shard_size=2)


def keys(loader):
    return [k for b in loader for k in b["key"]]


def test_the_helper_builds_shards_with_the_pipeline(tmp_path):
    out = build_shards(tmp_path, codecs=(("jpeg", 10),), per_class=1, shard_size=1)
    assert sorted(p.name for p in (out / "train" / "jpeg-10").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_group_shards_and_patterns(shards):
    ss = group_shards(str(shards / "train" / "*" / "*.tar"))
    assert [s.name for s in ss] == ["jpeg-10", "lossless"]
    assert [s.count for s in ss] == [8, 8] and ss[0].codec == "jpeg" and ss[0].q == 10 and ss[1].lossless
    brace = str(shards / "train" / "jpeg-10" / "shard-{000000..000001}.tar")
    assert len(expand_shards(brace)) == 2
    one = group_shards(brace)[0]
    assert one.count == 4  # counted from the manifest's per-shard counts
    both = str(shards / "train" / "{jpeg-10,lossless}" / "shard-{000000..000001}.tar")
    assert [p.split("/")[-2:] for p in expand_shards(both)] == [
        ["jpeg-10", "shard-000000.tar"], ["jpeg-10", "shard-000001.tar"],
        ["lossless", "shard-000000.tar"], ["lossless", "shard-000001.tar"]]
    assert ss[0].setting.name == "jpeg-10" and ss[0].manifest.split == "train"
    with pytest.raises(ShardError, match="no .tar shards match"):
        expand_shards(str(shards / "nothing" / "*.tar"))
    with pytest.raises(ShardError, match="does not exist"):
        expand_shards(str(shards / "train" / "jpeg-10" / "shard-{000000..000009}.tar"))


def test_train_batches_equal_and_decoding_choices(shards):
    ss = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    loader, n = make_train_loader(ss, LoaderSpec(batch_size=3, workers=0, shuffle_buffer=4), epoch=0)
    batches = list(loader)
    assert n == 8 // 3 == len(batches)
    assert all(b["comp"].shape == (3, 3, 224, 224) and b["comp"].dtype == torch.uint8 for b in batches)
    assert "clean" not in batches[0]  # clean crop not decoded when not needed
    assert set(batches[0]["label"].tolist()) <= {0, 217}
    loader, _ = make_train_loader(ss, LoaderSpec(batch_size=3, workers=0), epoch=0, need_clean=True, need_comp=False)
    b = next(iter(loader))
    assert "comp" not in b and b["clean"].shape == (3, 3, 224, 224)


def test_lossless_input_is_the_torchvision_crop_of_the_source(shards):
    """x~ = x in the lossless setting: what the loader gives the model (without asking for the
    clean crop) equals torchvision's Resize(256, bicubic) + CenterCrop(224) of the source image,
    computed here independently from the source files the samples name."""
    import json
    import tarfile

    from PIL import Image
    from torchvision import transforms

    ss = group_shards(str(shards / "train" / "lossless" / "*.tar"))
    sources = {}
    for shard in ss[0].shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    sources[m.name[: -len(".json")]] = meta["path"]
    rule = transforms.Compose([transforms.Resize(256, transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(224), transforms.PILToTensor()])
    seen = 0
    for b in make_eval_loader(ss, 4, need_clean=False):
        assert "clean" not in b
        for key, comp in zip(b["key"], b["comp"]):
            path = sources[key]
            src = path if path.startswith("/") else str(shards.parent / "src" / "train" / path)
            with Image.open(src) as im:
                assert torch.equal(comp, rule(im.convert("RGB"))), key
            seen += 1
    assert seen == 8


def test_epoch_order_is_seeded(shards):
    ss = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    spec = LoaderSpec(batch_size=2, workers=2, shuffle_buffer=4, seed=1)
    a = keys(make_train_loader(ss, spec, epoch=0)[0])
    b = keys(make_train_loader(ss, spec, epoch=0)[0])
    c = keys(make_train_loader(ss, spec, epoch=1)[0])
    assert a == b and len(a) == 8 and a != c


@pytest.mark.parametrize("workers, buffer", [(0, 2), (2, 2), (1, 1000)])
def test_ranks_see_disjoint_data_and_equal_batches(shards, workers, buffer):
    ss = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    spec = LoaderSpec(batch_size=2, workers=workers, shuffle_buffer=buffer)
    per_rank = [list(make_train_loader(ss, spec, epoch=0, rank=r, world=2)[0]) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 8 // (2 * 2)
    k0 = [k for b in per_rank[0] for k in b["key"]]
    k1 = [k for b in per_rank[1] for k in b["key"]]
    assert k0 and k1 and not (set(k0) & set(k1))
    # 4 shards of 2 for 2 ranks of batch 2 (and 1 or 2 workers): every sample exactly once
    assert sorted(k0 + k1) == sorted(set(k0 + k1)) and len(k0 + k1) == 8
    # eval: every sample exactly once over the ranks
    ev = [k for r in range(2) for k in keys(make_eval_loader(ss, 3, rank=r, world=2, workers=workers))]
    assert sorted(ev) == sorted(set(ev)) and len(ev) == 8


def test_too_few_shards_for_ranks_is_an_error_unless_resampled(shards):
    ss = group_shards(str(shards / "train" / "jpeg-10" / "shard-000000.tar"))
    with pytest.raises(ValueError, match="resampled"):
        make_train_loader(ss, LoaderSpec(batch_size=1, workers=0), epoch=0, rank=0, world=2)
    loader, n = make_train_loader(ss, LoaderSpec(batch_size=1, workers=0, resampled=True), epoch=0, rank=1, world=2)
    assert len(list(loader)) == n == 1


def test_limit_caps_the_epoch(shards):
    ss = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    loader, n = make_train_loader(ss, LoaderSpec(batch_size=2, workers=0), epoch=0, limit=4)
    assert n == 2 == len(list(loader))
    assert len(keys(make_eval_loader(ss, 2, limit=3))) == 3


# -- the lean per-sample stages ------------------------------------------------------
def _same_batches(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        assert torch.equal(x["label"], y["label"])
        for k in ("comp", "clean", "teacher"):
            assert (k in x) == (k in y), k
            if k in x:
                assert x[k].shape == y[k].shape and x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("need_comp, need_clean, setting", [(True, False, "jpeg-10"), (True, True, "jpeg-10"),
                                                            (False, True, "jpeg-10"), (True, False, "lossless")])
def test_loader_yields_what_webdatasets_stock_stages_yield(shards, need_comp, need_clean, setting):
    """Same samples, same order, same pixels as the stock webdataset stages (tar reader,
    shuffle, decode_any per sample, torch.stack) for the same plan and seed."""
    from fixtures import loader_reference

    ss = group_shards(str(shards / "train" / setting / "*.tar"))
    spec = LoaderSpec(batch_size=3, workers=0, shuffle_buffer=4, seed=5)
    for epoch in (0, 1):
        for rank, world in ((0, 1), (1, 2)):
            kw = dict(epoch=epoch, rank=rank, world=world, need_comp=need_comp, need_clean=need_clean)
            ours = [b for b in make_train_loader(ss, spec, **kw)[0] if b["key"]]
            ref = list(loader_reference.train_loader(ss, spec, **kw)[0])
            _same_batches(ours, ref)


def test_batches_are_channels_last_views_and_the_step_makes_them_contiguous(shards):
    from trainer.methods import to_input

    ss = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    b = next(iter(make_eval_loader(ss, 4, need_clean=True)))
    assert b["comp"].is_contiguous(memory_format=torch.channels_last) and b["comp"].shape == (4, 3, 224, 224)
    x = to_input(b["comp"], torch.device("cpu"))
    assert x.is_contiguous() and x.dtype == torch.float32 and torch.equal(x, b["comp"].float() / 255)
    assert to_input(b["comp"], torch.device("cpu"), channels_last=True).is_contiguous(
        memory_format=torch.channels_last)


# -- the epoch plan (the trainer on many nodes) -------------------------------------------
def test_epoch_plan_shares_batches_in_proportion_to_samples():
    from trainer.data import epoch_plan

    items = [{"url": f"s{i}"} for i in range(10)]
    counts = {f"s{i}": 1000 for i in range(9)} | {"s9": 400}
    plans = [epoch_plan(items, counts, 9400 // (2 * 32), seed=3, rank=r, world=2, workers=4) for r in range(2)]
    shards = [i["url"] for p in plans for w in p for i in w.shards]
    assert sorted(shards) == sorted(counts)                                # every shard once, over ranks and workers
    for p in plans:
        assert sum(w.batches for w in p) == 9400 // (2 * 32)               # every rank: the same batch count
        for w in p:                                                        # in proportion: < 1 batch from the ideal
            assert abs(w.batches - w.samples * (9400 // 64) / sum(x.samples for x in p)) < 1
    # exact: equal shards, as many as ranks x workers, a whole number of batches each
    exact = epoch_plan(items[:8], counts, 8000 // (2 * 50), seed=0, rank=1, world=2, workers=2)
    assert [(len(w.shards), w.samples, w.batches) for w in exact] == [(2, 2000, 40), (2, 2000, 40)]
    assert epoch_plan(items, counts, 5, seed=1, workers=3) == epoch_plan(items, counts, 5, seed=1, workers=3)


@pytest.mark.parametrize("batch, world, shards_used, seen, repeated", [
    (3, 1, "*", 6, 0),              # 8 samples, 2 batches of 3: 2 samples wait for another epoch
    (1, 2, "shard-00000[0-2]", 5, 1),   # 3 shards for 2 ranks: rank 0 reads 3 of its 4, rank 1 starts its 2 again
])
def test_uneven_shards_leave_out_or_repeat_what_the_plan_says(shards, batch, world, shards_used, seen, repeated):
    ss = group_shards(str(shards / "train" / "jpeg-10" / f"{shards_used}.tar"))
    spec = LoaderSpec(batch_size=batch, workers=0, shuffle_buffer=100)
    got = [k for r in range(world) for k in keys(make_train_loader(ss, spec, epoch=0, rank=r, world=world)[0])]
    assert len(set(got)) == seen and len(got) - len(set(got)) == repeated


# -- GPU JPEG decoding: the CPU side of the path, and the fallback without CUDA -------
def test_gpu_jpeg_batches_decode_on_a_device_to_the_loaders_pixels(shards):
    """A gpu_jpeg loader leaves the bitstreams (headers checked) for DeviceJpeg, which
    runs torchvision.io.decode_jpeg on the device: here the CPU stands in for CUDA."""
    from trainer.data import DeviceJpeg

    ss = group_shards(str(shards / "train" / "jpeg-10" / "*.tar"))
    plain = list(make_eval_loader(ss, 3))
    raw = list(make_eval_loader(ss, 3, gpu_jpeg=True))
    assert "comp" not in raw[0] and raw[0]["comp_jpeg"].dtype == torch.uint8
    assert int(raw[0]["comp_jpeg_lengths"].sum()) == raw[0]["comp_jpeg"].numel()
    for a, b in zip(plain, raw):
        b = DeviceJpeg(torch.device("cpu"))(b)
        assert a["key"] == b["key"] and torch.equal(a["label"], b["label"])
        assert b["comp"].shape == a["comp"].shape and b["comp"].dtype == torch.uint8
        diff = (b["comp"].int() - a["comp"].int()).abs().float()
        assert diff.mean() < 0.5 and diff.max() <= 8   # libjpeg builds may differ in the last bits; here 0


def test_a_picture_the_device_decoder_refuses_is_skipped_and_counted(shards, tmp_path):
    import shutil

    from tests.test_trainer_failures import rewrite_tar
    from trainer.data import DeviceJpeg
    from trainer.loop import Skips

    d = tmp_path / "s"
    shutil.copytree(shards / "train" / "jpeg-10", d)
    victim = "n02102040/n02102040_0001_JPEG"
    for tar in d.glob("*.tar"):   # a valid header, half the entropy-coded data
        rewrite_tar(tar, lambda name, data: data[: len(data) // 2] if name == victim + ".comp.jpg" else data)
    ss = group_shards(str(d / "*.tar"))
    decode = DeviceJpeg(torch.device("cpu"))
    batches = [decode(b) for b in make_eval_loader(ss, 8, gpu_jpeg=True)]
    skips = Skips()
    for b in batches:
        skips.add(b)
    keys = [k for b in batches for k in b["key"]]
    assert victim not in keys and len(keys) == 7 and skips.count == 1 and victim in skips.reasons[0]
    assert sum(b["comp"].shape[0] for b in batches) == 7 == sum(b["label"].numel() for b in batches)


def test_gpu_decode_without_cuda_falls_back_with_one_message(shards, tmp_path, caplog):
    from trainer import TrainConfig, train

    base = dict(shards=[str(shards / "train" / "jpeg-10" / "*.tar")], arch="mobilenet_v3_small", num_classes=1000,
                batch_size=4, workers=0, shuffle_buffer=4, progress=False, epochs=1, lr=1e-3, method="finetune",
                device="cpu")
    caplog.set_level("WARNING")
    a = train(TrainConfig(**base, out=str(tmp_path / "a"), gpu_decode=True))
    warned = [r.getMessage() for r in caplog.records if "--gpu-decode" in r.getMessage()]
    assert warned == ["--gpu-decode: no CUDA device: the loader workers decode the JPEG bitstreams on the CPU"]
    b = train(TrainConfig(**base, out=str(tmp_path / "b")))
    assert a.rows[0]["train_loss"] == b.rows[0]["train_loss"]


def test_default_workers_follow_the_cpus_and_the_ranks_per_node(monkeypatch):
    from trainer.data import loader as data

    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data.default_workers() == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert data.default_workers() == 1
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(256)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert data.default_workers() == 32
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert data.default_workers() == 1


def test_worker_buffers_are_used_again_only_after_the_main_process_copied_them(shards):
    """Workers reuse their shared-memory batch buffers (trainer.data.batch._Ring): a consumer that
    keeps every batch must still see each sample's own pixels, labels and teacher rows."""
    ss = group_shards(str(shards / "train" / "lossless" / "*.tar"))
    truth = {k: (c, l) for b in make_eval_loader(ss, 8) for k, c, l in zip(b["key"], b["comp"], b["label"])}
    spec = LoaderSpec(batch_size=2, workers=2, shuffle_buffer=2)
    kept = list(make_train_loader(ss, spec, epoch=0, batches=12)[0])    # 3 passes over 8 samples
    assert sum(len(b["key"]) for b in kept) == 24
    for b in kept:
        for k, c, l in zip(b["key"], b["comp"], b["label"]):
            assert torch.equal(c, truth[k][0]) and l == truth[k][1], k


def test_epoch_plan_on_imagenet_train_leaves_out_and_repeats_a_fraction_of_a_percent():
    """The figure of docs/training.md ("Epochs"): ImageNet train (1,281,167 images) in shards of 1000, 8 ranks x 7
    workers, batch 256; per epoch, the samples left for another epoch and those read twice."""
    from trainer.data import epoch_plan

    items = [{"url": f"s{i}"} for i in range(1282)]
    counts = {f"s{i}": 1000 for i in range(1281)} | {"s1281": 167}
    total = sum(counts.values())
    for seed in range(3):
        out = rep = 0
        for rank in range(8):
            plan = epoch_plan(items, counts, total // (8 * 256), seed=seed, rank=rank, world=8, workers=7)
            assert sum(w.batches for w in plan) == total // (8 * 256)
            for w in plan:
                assert abs(w.samples - 256 * w.batches) < 256 + 1000     # one batch, plus the rank's extra shard
                out += max(0, w.samples - 256 * w.batches)
                rep += max(0, 256 * w.batches - w.samples)
        assert out / total < 0.004 and rep / total < 0.003, (seed, out / total, rep / total)


def test_a_run_records_the_worker_count_it_used(shards, tmp_path):
    from trainer import TrainConfig, train
    from trainer.config import read_yaml
    from trainer.data import default_workers

    r = train(TrainConfig(shards=[str(shards / "train" / "jpeg-10" / "*.tar")], arch="mobilenet_v3_small",
                          num_classes=1000, batch_size=4, shuffle_buffer=4, progress=False, epochs=1, lr=1e-3,
                          method="finetune", steps_per_epoch=1, out=str(tmp_path / "r")))
    assert r.config.workers == read_yaml(tmp_path / "r" / "args.yaml")["workers"] == default_workers()


def _keys_in_a_spawned_process(pattern: str, out) -> None:
    """Runs in a process started by "spawn", whose own default start method is then "spawn"
    (as in experiments' parallel seeds; Python >= 3.14 defaults to "forkserver" on Linux)."""
    ss = group_shards(pattern)
    out.put(keys(make_train_loader(ss, LoaderSpec(batch_size=3, workers=2, shuffle_buffer=4), epoch=0)[0]))


def test_loader_workers_start_under_a_spawn_default(shards):
    import multiprocessing as mp

    pattern = str(shards / "train" / "jpeg-10" / "*.tar")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_keys_in_a_spawned_process, args=(pattern, q))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0
    expected = keys(make_train_loader(group_shards(pattern), LoaderSpec(batch_size=3, workers=2, shuffle_buffer=4),
                                      epoch=0)[0])
    assert got == expected and len(got) > 0
