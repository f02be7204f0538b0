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

import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from trainer import TrainConfig, loop, methods  # noqa: E402
from trainer.clitools import run_click  # noqa: E402
from trainer.data import LoaderSpec, group_shards, make_train_loader  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.teacher_cache import resolve_caches  # noqa: E402

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


def cfg_for(mode, arch, teacher, alpha, device):
    """The trainer's Step for a mode (the trainer's defaults on a GPU: bf16 autocast, channels_last)."""
    cuda = device.type == "cuda"
    name = "finetune" if mode == "finetune" else "expert"
    method = methods.create(TrainConfig(shards=["-"], out="-", method=name, arch=arch,
                                        alpha=alpha if name == "expert" else None).resolved())
    return loop.Step(method=method, teacher=teacher if mode == "expert-live" else None, device=device,
                     amp=cuda, channels_last=cuda)


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
        terms = cfg.method.loss(model, b, cfg)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        n += b["label"].shape[0]
    sync(cfg.device)
    return n / (time.perf_counter() - t0)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--arch", default="mobilenet_v2", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=6, show_default=True, help="Timed steps per mode and round.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--images", type=click.IntRange(min=4), default=96, show_default=True, help="Synthetic images to shard.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=max(1, min(4, os.cpu_count() or 1)), show_default=True)
@click.option("--shards", default=None, help="Use these shards instead of synthetic ones.")
@click.option("--markdown", default=None, help="Write the table as Markdown to this path.")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda (bf16 autocast and channels_last on cuda).")
def cli(**params):
    """Trainer throughput: fine-tuning vs expert (live / cached teacher), side by side."""
    bench(SimpleNamespace(**params))


def main(argv=None):
    return run_click(cli, argv, "benchmarks/bench_trainer.py")


def bench(a):
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory(prefix="bench-trainer-")
    pattern = a.shards or make_shards(Path(tmp.name), a.images)
    settings = group_shards(pattern)
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
            cfg = cfg_for(m, a.arch, teacher, 1e-2, device)
            time_steps(model, opt, pre[m], cfg, 1)  # warm-up
            res[m]["step"].append(time_steps(model, opt, pre[m], cfg, a.steps))
            # end to end
            loader, n_b = loader_for(m, settings, a.batch_size, a.workers, caches, epoch=r)
            sync(device)
            t = time.perf_counter()
            n = 0
            for i, b in zip(range(a.steps), loader):
                terms = cfg.method.loss(model, b, cfg)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                n += b["label"].shape[0]
            sync(device)
            res[m]["e2e"].append(n / (time.perf_counter() - t))
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in res.items()}
    base = med["finetune"]
    header = ["mode", "loader only (img/s)", "training step (img/s)", "end to end (img/s)",
              "step cost vs fine-tuning", "end-to-end cost vs fine-tuning"]
    body = [[m, f"{v['loader']:.1f}", f"{v['step']:.1f}", f"{v['e2e']:.1f}", f"{base['step'] / v['step']:.3f}x",
             f"{base['e2e'] / v['e2e']:.3f}x"] for m, v in ((m, med[m]) for m in MODES)]
    lines = [f"Trainer throughput ({a.arch}, batch {a.batch_size}, 224x224 jpeg-10 shards, {count} images, "
             f"{device_name(device, a.threads)}, {a.workers} loader worker(s), median of {a.rounds} rounds; "
             f"teacher cache built in {cache_s:.1f} s)", "", table(header, body)]
    ratio = base["step"] / med["expert-cached"]["step"]
    lines += ["", f"expert (cached teacher) / fine-tuning step cost: {ratio:.3f}x "
                  f"({'meets' if ratio <= 1.05 else 'misses'} the <= 1.05x goal); "
                  f"live teacher: {base['step'] / med['expert-live']['step']:.3f}x"]
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        atomic_write(a.markdown, text + "\n")
    tmp.cleanup()
    return med


def device_name(device, threads):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, bf16 autocast, channels_last"
    return f"CPU {threads} thread(s)"


if __name__ == "__main__":
    sys.exit(main())
