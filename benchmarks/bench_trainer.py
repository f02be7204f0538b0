"""Trainer throughput at steady state: does the loader keep the model busy?

    python benchmarks/bench_trainer.py [--arch mobilenet_v2] [--batch-size 16] [--json benchmarks/results/trainer.json]
    python benchmarks/bench_trainer.py --device cuda --arch resnet50 --batch-size 64     # make bench-gpu

For each mode (fine-tuning; expert training with a live teacher; expert training with the
teacher cache), measured side by side in the same process, modes interleaved over
``--rounds`` rounds:

* loader only: batches per second the trainer's train loader delivers (page-locked on CUDA);
* training step: the step alone on batches already loaded (the copy to the device included);
* end to end: the loader feeding the step, as ``trainer.train`` runs it.

Steady state: each mode's loader is one long epoch whose workers persist through every
round (``persistent`` in effect); the shuffle buffer's fill, ``--warmup`` seconds and, before
each timed stretch, the batches the workers made while another mode ran are untimed.
Each of the three is timed for ``--seconds`` (20 by default) per mode, on ``--images``
distinct synthetic photos in split-layout jpeg-10 shards (the layout for ImageNet; the
expert modes read the clean crops from the reference, or the cache).  Loader workers: the
trainer's default (the CPU count), or ``--workers``.  ``--precision`` as the trainer's
(auto: bf16 autocast and channels_last where the device runs bf16 natively; the table names
the one used).  On CUDA: pinned memory, non-blocking copies, cuDNN autotuning (the trainer's settings);
``--gpu-decode`` decodes the JPEG bitstreams with nvJPEG instead of in the workers.
After each round it prints that round's rates and the running totals over the rounds so
far; the table gives the totals over all rounds.

Goals: expert (cached teacher) costs <= 1.05 x fine-tuning per step; on a GPU, end to end
>= 0.9 x the training step.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from trainer import TrainConfig, loop, methods  # noqa: E402
from trainer.data import PREFETCH, LoaderSpec, default_workers, group_shards, make_train_loader  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.precision import CHOICES as PRECISIONS, Precision, resolve  # noqa: E402
from trainer.teacher_cache import resolve_caches  # noqa: E402

MODES = ("finetune", "expert-live", "expert-cached")
EPOCH = 10 ** 7   # batches: one epoch longer than any benchmark


def make_shards(root: Path, n: int, jobs: int) -> str:
    """``n`` synthetic photos of 10 classes -> split-layout jpeg-10 (+ lossless) shards of 100."""
    from pipeline.build import build
    from fixtures.synthetic import make_image_folder
    classes = [f"n{i:08d}" for i in range(10)]
    make_image_folder(root / "src", classes=classes, per_class=-(-n // 10), size=(300, 260))
    build(root / "src", "train", ["jpeg-10"], root / "shards", shard_size=100, jobs=jobs, layout="split",
          limit=n, progress=False)
    return str(root / "shards" / "train" / "jpeg-10" / "*.tar")


def step_for(mode: str, arch: str, teacher, device: torch.device, precision: Precision) -> loop.Step:
    """The trainer's Step for a mode, in ``precision``."""
    name = "finetune" if mode == "finetune" else "expert"
    method = methods.create(TrainConfig(shards=["-"], out="-", method=name, arch=arch).resolved())
    return loop.Step(method=method, teacher=teacher if mode == "expert-live" else None, device=device,
                     precision=precision)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, opt, batch, step: loop.Step) -> int:
    batch = step.decoded(batch)
    terms = step.method.loss(model, batch, step)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt.step()
    return int(batch["label"].shape[0])


class Mode:
    """One training mode: its persistent loader, its Step, pre-loaded batches, the times."""

    def __init__(self, name, a, settings, caches, teacher, device, workers, precision):
        self.name, self.device = name, device
        spec = LoaderSpec(batch_size=a.batch_size, workers=workers, shuffle_buffer=1000, seed=0,
                          gpu_jpeg=a.gpu_decode and device.type == "cuda")
        loader, _ = make_train_loader(settings, spec, epoch=0, need_clean=(name == "expert-live"),
                                      caches=caches if name == "expert-cached" else None,
                                      pin_memory=device.type == "cuda", batches=EPOCH)
        self.it = iter(loader)
        self.prefetch = PREFETCH * workers + 1
        self.step = step_for(name, a.arch, teacher, device, precision)
        self.pre = [next(self.it) for _ in range(4)]          # includes the shuffle buffer's fill
        self.images = {"loader": 0, "step": 0, "e2e": 0}
        self.seconds = {"loader": 0.0, "step": 0.0, "e2e": 0.0}

    def warm(self, model, opt, seconds: float) -> None:
        t0 = time.perf_counter()
        while True:
            train_step(model, opt, next(self.it), self.step)
            if time.perf_counter() - t0 >= seconds:
                break
        sync(self.device)

    def _drain(self) -> None:
        for _ in range(self.prefetch):   # made while another mode ran: they would come for free
            next(self.it)

    def time_loader(self, seconds: float) -> None:
        self._drain()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            b = next(self.it)
            if "comp_jpeg" in b:
                b = self.step.decoded(b)
            n += len(b["key"])
        sync(self.device)
        self._add("loader", n, time.perf_counter() - t0)

    def time_step(self, model, opt, seconds: float) -> None:
        sync(self.device)
        n, i, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += train_step(model, opt, dict(self.pre[i % len(self.pre)]), self.step)
            i += 1
            if i % 4 == 0:
                sync(self.device)
        sync(self.device)
        self._add("step", n, time.perf_counter() - t0)

    def time_e2e(self, model, opt, seconds: float) -> None:
        self._drain()
        sync(self.device)
        n, i, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += train_step(model, opt, next(self.it), self.step)
            i += 1
            if i % 4 == 0:
                sync(self.device)
        sync(self.device)
        self._add("e2e", n, time.perf_counter() - t0)

    def _add(self, what: str, n: int, dt: float) -> None:
        self.images[what] += n
        self.seconds[what] += dt

    def rate(self, what: str) -> float:
        return self.images[what] / self.seconds[what]

    def snapshot(self) -> tuple[dict, dict]:
        return dict(self.images), dict(self.seconds)

    def round_rate(self, what: str, before: tuple[dict, dict]) -> float:
        """The rate of the stretch since ``before`` (one round) alone."""
        return (self.images[what] - before[0][what]) / (self.seconds[what] - before[1][what])


def bench(a) -> tuple[str, list[dict]]:
    """(the Markdown table and notes, each round's rates per mode: that round's own and the
    running totals over the rounds so far, img/s)."""
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True     # as trainer.train does on CUDA
    workers = a.workers if a.workers is not None else default_workers()
    tmp = tempfile.TemporaryDirectory(prefix="bench-trainer-")
    t0 = time.perf_counter()
    pattern = a.shards or make_shards(Path(tmp.name), a.images, a.jobs)
    build_s = time.perf_counter() - t0
    print(f"shards ready in {build_s:.1f} s", flush=True)
    settings = group_shards(pattern)
    prec = resolve(a.precision, device)
    print(prec.describe(), flush=True)
    model = prec.prepare(build_model(a.arch, None, 1000).to(device))
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    modes = [m for m in a.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        sys.exit(f"error: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    t0 = time.perf_counter()
    caches = resolve_caches(settings, teacher, a.arch, None, mode=str(Path(tmp.name) / "cache"), workers=workers,
                            batch_size=2 * a.batch_size, device=device, precision=prec) \
        if "expert-cached" in modes else None
    cache_s = time.perf_counter() - t0
    print(f"teacher cache ready in {cache_s:.1f} s", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.5, 0.99))
    runs = [Mode(m, a, settings, caches, teacher, device, workers, prec) for m in modes]
    for m in runs:
        m.warm(model, opt, a.warmup)
    print(f"warmed up ({len(runs)} mode(s), {workers} loader worker(s) each)", flush=True)
    per = a.seconds / a.rounds
    rounds = []
    for r in range(a.rounds):
        for m in runs:
            before = m.snapshot()
            m.time_loader(per)
            m.time_step(model, opt, per)
            m.time_e2e(model, opt, per)
            alone = {w: m.round_rate(w, before) for w in ("loader", "step", "e2e")}
            rounds.append({"round": r, "mode": m.name, "this_round": alone,
                           "running": {w: m.rate(w) for w in ("loader", "step", "e2e")}})
            print(f"round {r} {m.name}: this round loader {alone['loader']:.1f} step {alone['step']:.1f} "
                  f"end to end {alone['e2e']:.1f} img/s (end to end / step {alone['e2e'] / alone['step']:.2f}); "
                  f"rounds 0-{r} together: loader {m.rate('loader'):.1f} step {m.rate('step'):.1f} "
                  f"end to end {m.rate('e2e'):.1f} img/s (end to end / step {m.rate('e2e') / m.rate('step'):.2f})",
                  flush=True)
    base = next((m for m in runs if m.name == "finetune"), runs[0])
    header = ["mode", "loader only (img/s)", "training step (img/s)", "end to end (img/s)", "end to end / step",
              "loader / step", "step cost vs fine-tuning", "end-to-end cost vs fine-tuning"]
    rows = [[m.name, f"{m.rate('loader'):.1f}", f"{m.rate('step'):.1f}", f"{m.rate('e2e'):.1f}",
             f"{m.rate('e2e') / m.rate('step'):.2f}", f"{m.rate('loader') / m.rate('step'):.2f}",
             *((f"{base.rate('step') / m.rate('step'):.3f}x", f"{base.rate('e2e') / m.rate('e2e'):.3f}x")
               if base.name == "finetune" else ("—", "—"))] for m in runs]
    count = sum(s.count for s in settings)
    lines = [f"Trainer throughput at steady state ({a.arch}, batch {a.batch_size}, 224x224 jpeg-10 split-layout shards "
             f"of {count} distinct images; {device_name(device, a.threads, prec)}; {workers} loader worker(s)"
             f"{' (the default for this machine)' if a.workers is None else ''}"
             f"{', JPEG decoded on the GPU' if a.gpu_decode and device.type == 'cuda' else ''}; "
             f"{a.seconds:g} s timed per mode and column in {a.rounds} interleaved rounds after {a.warmup:g} s of "
             f"warm-up; shards built in {build_s:.0f} s, teacher cache in {cache_s:.1f} s)", "",
             table(header, rows, align=["l"] + ["r"] * (len(header) - 1))]
    notes = []
    cached = next((m for m in runs if m.name == "expert-cached"), None)
    if cached is not None and base.name == "finetune":
        r = base.rate("step") / cached.rate("step")
        notes.append(f"expert (cached teacher) / fine-tuning step cost: {r:.3f}x "
                     f"({'meets' if r <= 1.05 else 'misses'} the <= 1.05x goal)")
    if device.type == "cuda":
        for m in runs:
            ratio = m.rate("e2e") / m.rate("step")
            notes.append(f"{m.name}: end to end / step {ratio:.2f} ({'meets' if ratio >= 0.9 else 'misses'} "
                         "the >= 0.9 goal)")
    if notes:
        lines += [""] + [f"{n}." for n in notes]
    text = "\n".join(lines)
    for m in runs:
        m.it = None
    tmp.cleanup()
    return text, rounds


def device_name(device: torch.device, threads: int, prec: Precision) -> str:
    how = f"{prec.name} autocast" if prec.dtype is not None else "fp32"
    how += ", channels_last" if prec.channels_last else ""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {how}, {os.cpu_count()} CPU cores"
    return f"CPU, {how}, {threads} thread(s) for the model, {os.cpu_count()} core(s)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mobilenet_v2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--seconds", type=float, default=20.0, help="timed steady state per mode and column")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=float, default=5.0, help="untimed training seconds per mode first")
    p.add_argument("--images", type=int, default=2000, help="distinct synthetic images")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the trainer's, from the CPUs)")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="torch CPU threads")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="jobs for building the shards")
    p.add_argument("--shards", default=None, help="use these shards instead of synthetic ones")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="as the trainer's --precision")
    p.add_argument("--gpu-decode", action="store_true", help="decode the JPEG bitstreams on the GPU (nvJPEG)")
    p.add_argument("--markdown", default=None)
    p.add_argument("--json", default=None, help="the results file the docs block is rendered from "
                   "(docsgen/readme_block.py)")
    a = p.parse_args(argv)
    text, rounds = bench(a)
    print(text)
    if a.markdown:
        atomic_write(a.markdown, text + "\n")
    if a.json:
        from docsgen.readme_block import save
        save(a.json, text, "benchmarks/bench_trainer.py", sys.argv[1:] if argv is None else argv,
             gpu=a.device.startswith("cuda"), rounds=rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
