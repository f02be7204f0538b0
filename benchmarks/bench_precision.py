"""fp32 against bf16 (``--precision``) at steady state, side by side in one process: the
training step, the teacher-cache forward, evaluation and the served model.

    python benchmarks/bench_precision.py [--seconds 20] [--json benchmarks/results/precision.json]

Each column is the trainer's or the receiver's own code on batches already in memory (the
loader is measured by bench_loader.py and bench_trainer.py), MobileNetV2 with random weights
(the same work per image as trained ones), batch 32, 224², on the CPU:

* training step: expert training with the teacher's logits from the cache (the trainer's
  default), ``Method.loss`` + backward + Adam, the model in train mode;
* teacher-cache forward: ``build_cache``'s forward (to float, the layout, the teacher under
  the precision's autocast, logits to float16 on the host);
* evaluation: ``trainer.loop.evaluate`` (the forward, top-1/top-5 and the loss);
* served model: ``receiver.core.classify``, the receiver's forward and top-5, at
  the server's largest micro-batch (``m2m-serve --max-batch``, 32).

Every (column, precision) pair is warmed up first (``--warmup`` seconds, untimed: oneDNN
builds its kernels on the first calls), then timed for ``--seconds`` in ``--rounds`` rounds;
inside a round fp32 and bf16 take turns in ``--slice``-second slices (which goes first
alternates between rounds), so that a change in the machine's load reaches both alike.  The
ratio is bf16 img/s / fp32 img/s.
Goals on a CPU with native bf16: training step >= 2.5x, the inference columns >= 2x.

On a device without native bf16 there is nothing to compare: the script says so and exits 0
without writing its results file (``make bench`` goes on).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from trainer import TrainConfig, loop, methods, precision  # noqa: E402
from receiver.core import classify  # noqa: E402
from trainer.methods import to_input  # noqa: E402
from trainer.models import build_model, set_train_mode  # noqa: E402

ARCH = "mobilenet_v2"
COLUMNS = ("training step", "teacher-cache forward", "evaluation", "served model")
#: the goal of each column: bf16 img/s / fp32 img/s on a CPU with native bf16
GOALS = {"training step": 2.5, "teacher-cache forward": 2.0, "evaluation": 2.0, "served model": 2.0}


def batch_of(n: int, seed: int) -> dict:
    """A loader-like batch: uint8 crops laid out as the loader hands them (N,3,H,W views of
    N,H,W,3 memory), labels, and float16 teacher logits as the cache gives them."""
    g = torch.Generator().manual_seed(seed)
    hwc = torch.randint(0, 256, (n, 224, 224, 3), dtype=torch.uint8, generator=g)
    return {"comp": hwc.permute(0, 3, 1, 2), "clean": hwc.permute(0, 3, 1, 2), "key": [f"k{i}" for i in range(n)],
            "label": torch.randint(0, 1000, (n,), generator=g),
            "teacher": torch.randn(n, 1000, generator=g).half()}


class Column:
    """One column in one precision: a callable doing one batch of work, its images and seconds."""

    def __init__(self, name: str, prec: precision.Precision, work, batch: int):
        self.name, self.prec, self.work, self.batch = name, prec, work, batch
        self.images, self.seconds = 0, 0.0

    def run(self, seconds: float, timed: bool = True) -> None:
        n, t0 = 0, time.perf_counter()
        while True:
            self.work()
            n += self.batch
            if time.perf_counter() - t0 >= seconds:
                break
        if timed:
            self.images += n
            self.seconds += time.perf_counter() - t0

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")


def columns_for(prec: precision.Precision, base: torch.nn.Module, batch: dict, xs: list[np.ndarray]) -> list[Column]:
    """The four columns of one precision, each on its own copy of the same initial weights."""
    device = torch.device("cpu")
    n = len(xs)
    method = methods.create(TrainConfig(shards=["-"], out="-", method="expert", arch=ARCH).resolved())
    student = prec.prepare(copy.deepcopy(base))
    set_train_mode(student)
    opt = torch.optim.Adam(student.parameters(), lr=1e-5, betas=(0.5, 0.99))
    step = loop.Step(method=method, device=device, precision=prec)

    def train():
        terms = method.loss(student, batch, step)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()

    teacher = prec.prepare(copy.deepcopy(base).eval().requires_grad_(False))

    @torch.no_grad()
    def cache():
        x = to_input(batch["clean"], device, prec.channels_last)
        with prec.autocast():
            teacher(x).float().cpu().numpy().astype(np.float16)

    evaluated = prec.prepare(copy.deepcopy(base).eval())
    eval_step = loop.Step(device=device, precision=prec)

    def evaluate():
        loop.evaluate(evaluated, [batch], eval_step)

    served = prec.prepare(copy.deepcopy(base).eval())

    def serve():
        classify(served, xs, "cpu", 5, prec)

    return [Column(c, prec, w, n) for c, w in zip(COLUMNS, (train, cache, evaluate, serve))]


def bench(a) -> tuple[str, list[dict], dict]:
    torch.set_num_threads(a.threads)
    precs = [precision.resolve("fp32", "cpu"), precision.resolve("bf16", "cpu")]
    torch.manual_seed(0)
    base = build_model(ARCH, None, 1000)
    batch = batch_of(a.batch_size, 0)
    xs = list(batch["comp"].permute(0, 2, 3, 1).numpy())
    cols = {p.name: columns_for(p, base, batch, xs) for p in precs}
    for p in precs:
        for c in cols[p.name]:
            c.run(a.warmup, timed=False)
    print(f"warmed up: {a.warmup:g} s per column and precision", flush=True)
    per = a.seconds / a.rounds
    rounds, load = [], 0.0
    for r in range(a.rounds):
        order = precs if r % 2 == 0 else precs[::-1]
        for i, name in enumerate(COLUMNS):
            pair = [cols[p.name][i] for p in order]
            before = [(c.images, c.seconds) for c in pair]
            # fp32 and bf16 take turns in slices, so that a change in the machine's load meets both
            while min(c.seconds - b[1] for c, b in zip(pair, before)) < per:
                for c in pair:
                    c.run(a.slice)
            for c, b in zip(pair, before):
                rate = (c.images - b[0]) / (c.seconds - b[1])
                rounds.append({"round": r, "column": name, "precision": c.prec.name, "img_s": rate})
                print(f"round {r} {name} {c.prec.name}: {rate:.1f} img/s", flush=True)
        load = max(load, os.getloadavg()[0])
    rows, ratios = [], {}
    for i, name in enumerate(COLUMNS):
        f32, b16 = cols["fp32"][i].rate, cols["bf16"][i].rate
        ratios[name] = b16 / f32
        goal = GOALS[name]
        rows.append([name, f"{f32:.1f}", f"{b16:.1f}", f"{ratios[name]:.2f}x", f">= {goal:g}x",
                     "met" if ratios[name] >= goal else "missed"])
    text = "\n".join([
        f"fp32 against bf16 (`--precision`) at steady state: {ARCH} (random weights), batch {a.batch_size}, 224²; "
        f"{precision.cpu_words()}; torch {a.threads} thread(s); fp32 = float32, NCHW; bf16 = bf16 autocast, "
        f"channels_last; {a.seconds:g} s timed per column and precision in {a.rounds} rounds, fp32 and bf16 taking "
        f"turns in {a.slice:g}-s slices, after {a.warmup:g} s of warm-up each. The 1-minute load average, read "
        f"after each round, was {load:.1f} at its highest: other processes shared the cores when above {os.cpu_count()}.", "",
        table(["column", "fp32 img/s", "bf16 img/s", "bf16 / fp32", "goal", ""], rows,
              align=["l", "r", "r", "r", "r", "l"]), "",
        "training step: expert training with the cached teacher (loss, backward, Adam); teacher-cache forward: the "
        "teacher over clean crops as the cache is built; evaluation: trainer.loop.evaluate; served model: the "
        "receiver's forward and top-5 (receiver.core.classify) at the server's largest micro-batch."])
    return text, rounds, {"ratios": ratios, "load_average": load}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per column and precision (>= 20)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=float, default=3.0, help="untimed seconds per column and precision first")
    p.add_argument("--slice", type=float, default=1.0, help="seconds one precision runs before the other's turn")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="torch CPU threads")
    p.add_argument("--markdown", default=None)
    p.add_argument("--json", default=None, help="the results file docs/benchmarks.md's block is rendered from")
    a = p.parse_args(argv)
    native, why = precision.native_bf16("cpu")
    if not native:
        print(f"bench_precision: skipped, this CPU has no native bf16 ({why}); nothing written", file=sys.stderr)
        return 0
    text, rounds, extra = bench(a)
    print(text)
    if a.markdown:
        atomic_write(a.markdown, text + "\n")
    if a.json:
        from docsgen.readme_block import save
        save(a.json, text, "benchmarks/bench_precision.py", sys.argv[1:] if argv is None else argv,
             rounds=rounds, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
