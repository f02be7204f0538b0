"""Trainer throughput: fine-tuning vs expert (live teacher) vs expert (cached teacher), side by side.

    python benchmarks/bench_trainer.py [--arch mobilenet_v2] [--batch-size 16] [--markdown bench-out/trainer.md]

Builds tiny jpeg-10 shards from synthetic photos (or uses --shards), then measures, in the
same process and interleaved over --rounds rounds (shared machines drift):
  * loader only: images/s of the streaming loader (comp decode; + clean decode for live teacher);
  * training step (batches pre-loaded in memory, so only the model's cost is timed);
  * end to end (loader + step).
Goal: expert with cached teacher <= 1.05x the cost of fine-tuning.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from trainer import engine  # noqa: E402
from trainer.cache_teacher import resolve_caches  # noqa: E402
from trainer.data import LoaderSpec, group_settings, make_train_loader  # noqa: E402
from trainer.losses import ExpertLoss  # noqa: E402
from trainer.models import build_model  # noqa: E402

MODES = ("finetune", "expert-live", "expert-cached")


def make_shards(root: Path, n: int) -> str:
    from pipeline.build import build_setting
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.conftest import make_image_folder
    classes = ("n01440764", "n02102040", "n02979186", "n03000684")
    make_image_folder(root / "src", classes=classes, per_class=max(1, n // len(classes)), size=(300, 260))
    build_setting(src=root / "src", split="train", codec="jpeg", q=10, out=root / "shards", shard_size=16, jobs=1,
                  progress=False)
    return str(root / "shards" / "train" / "jpeg-10" / "*.tar")


def loader_for(mode, settings, bs, workers, caches, epoch=0):
    spec = LoaderSpec(batch_size=bs, workers=workers, shuffle_buffer=64, seed=0)
    return make_train_loader(settings, spec, epoch=epoch, need_clean=(mode == "expert-live"),
                             caches=caches if mode == "expert-cached" else None)


def cfg_for(mode, teacher, alpha, device):
    cuda = device.type == "cuda"  # the trainer's defaults on a GPU: bf16 autocast, channels_last
    common = dict(device=device, amp=cuda, channels_last=cuda)
    if mode == "finetune":
        return engine.StepConfig(method="finetune", criterion=ExpertLoss(0.0), **common)
    return engine.StepConfig(method="expert", criterion=ExpertLoss(alpha),
                             teacher=teacher if mode == "expert-live" else None, **common)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, opt, batches, cfg, steps):
    model.train()
    sync(cfg.device)
    t0 = time.perf_counter()
    n = 0
    for i in range(steps):
        b = batches[i % len(batches)]
        terms = engine.compute_loss(model, b, cfg)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        n += b["label"].shape[0]
    sync(cfg.device)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mobilenet_v2")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=96, help="synthetic images to shard")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--shards", default=None, help="use these shards instead of synthetic ones")
    ap.add_argument("--markdown", default=None, help="write the table as markdown to this path")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (bf16 autocast and channels_last on cuda)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory(prefix="bench-trainer-")
    pattern = a.shards or make_shards(Path(tmp.name), a.images)
    settings = group_settings(pattern)
    model = build_model(a.arch, None, 1000).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    t0 = time.perf_counter()
    caches = resolve_caches(settings, teacher, a.arch, None, mode=str(Path(tmp.name) / "cache"),
                            batch_size=a.batch_size, device=device, amp=device.type == "cuda")
    cache_s = time.perf_counter() - t0
    count = sum(s.count for s in settings)

    # pre-load a few batches per mode (the step timing excludes the loader)
    pre = {m: [b for _, b in zip(range(3), loader_for(m, settings, a.batch_size, 0, caches)[0])] for m in MODES}
    init = copy.deepcopy(model.state_dict())
    res = {m: {"loader": [], "step": [], "e2e": []} for m in MODES}
    for r in range(a.rounds):
        for m in MODES:
            # loader only
            loader, n_b = loader_for(m, settings, a.batch_size, a.workers, caches, epoch=r)
            t = time.perf_counter()
            n = sum(b["label"].shape[0] for b in loader)
            res[m]["loader"].append(n / (time.perf_counter() - t))
            # training step only
            model.load_state_dict(init)
            opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.5, 0.99))
            cfg = cfg_for(m, teacher, 1e-2, device)
            time_steps(model, opt, pre[m], cfg, 1)  # warm-up
            res[m]["step"].append(time_steps(model, opt, pre[m], cfg, a.steps))
            # end to end
            loader, n_b = loader_for(m, settings, a.batch_size, a.workers, caches, epoch=r)
            sync(device)
            t = time.perf_counter()
            n = 0
            for i, b in zip(range(a.steps), loader):
                terms = engine.compute_loss(model, b, cfg)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                n += b["label"].shape[0]
            sync(device)
            res[m]["e2e"].append(n / (time.perf_counter() - t))
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in res.items()}
    base = med["finetune"]
    lines = [f"Trainer throughput ({a.arch}, batch {a.batch_size}, 224x224 jpeg-10 shards, {count} images, "
             f"{device_name(device, a.threads)}, {a.workers} loader worker(s), median of {a.rounds} rounds; "
             f"teacher cache built in {cache_s:.1f} s)", "",
             "| mode | loader only (img/s) | training step (img/s) | end to end (img/s) | step cost vs fine-tuning | end-to-end cost vs fine-tuning |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in MODES:
        v = med[m]
        lines.append(f"| {m} | {v['loader']:.1f} | {v['step']:.1f} | {v['e2e']:.1f} | "
                     f"{base['step'] / v['step']:.3f}x | {base['e2e'] / v['e2e']:.3f}x |")
    ratio = base["step"] / med["expert-cached"]["step"]
    lines += ["", f"expert (cached teacher) / fine-tuning step cost: {ratio:.3f}x "
                  f"({'meets' if ratio <= 1.05 else 'misses'} the <= 1.05x goal); "
                  f"live teacher: {base['step'] / med['expert-live']['step']:.3f}x"]
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(text + "\n")
    tmp.cleanup()
    return med


def device_name(device, threads):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, bf16 autocast, channels_last"
    return f"CPU {threads} thread(s)"


if __name__ == "__main__":
    main()
