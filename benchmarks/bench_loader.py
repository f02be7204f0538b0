"""One loader worker against the cost of reading the tar and decoding the bitstream.

    python benchmarks/bench_loader.py [--images 2000] [--seconds 20] [--markdown bench-out/loader.md] [--json benchmarks/results/loader.json]

On the same shards, side by side (modes interleaved over ``--rounds`` rounds, torch with one
thread as in a loader worker, shards in the page cache: CPU cost, not disk bandwidth):

Cost = CPU time per sample (of this process, or of the loader's worker process), so that
other work on the machine does not decide the result; the worker's wall-time rate is given too.

* ``tar + decode``: Python's ``tarfile`` reads each shard and ``decode_any`` decodes each
  ``comp.*`` member, nothing else: the floor the loader is measured against;
* ``loader, 1 worker``: the trainer's train loader (its defaults: shuffle buffer 1000,
  batch 32) in one worker process, batches taken by the main process;
* ``loader, in process``: the same stage list without a worker process;
* ``before``: the same plan through webdataset's stock per-sample stages (tar reader,
  shuffle, ``decode_any`` into a tensor per sample, ``torch.stack``): the loader as it was
  before the lean stages (``fixtures/loader_reference.py``);
* the parts: reading only (``tarfile``; this loader's reader ``trainer.data.tarstream``) and
  decoding only (bitstreams already in memory), each timed for min(5 s, ``--seconds``).

Steady state: each loader is one long epoch whose workers persist through every round; the
first batches (the shuffle buffer's fill) and the batches a worker prefetched while another
mode ran are taken untimed.  ``--seconds`` of timed steady state per mode and setting (20
by default), on ``--images`` distinct images (Imagenette val when ../shared is present,
synthetic photos otherwise; ``--bpg-images`` for the BPG setting, whose encoder is slow).
For BPG the table also gives decoding without the truncation check (one HEVC decode
instead of two; ``tools/bpg/hevc.py``).  Goal: loader, 1 worker <= 1.2 x tar + decode.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.codecs import decode_any  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from trainer.data import tarstream  # noqa: E402
from trainer.data import LoaderSpec, group_shards, make_train_loader  # noqa: E402

IMAGENETTE = ROOT.parent / "shared" / "imagenette"
EPOCH = 10 ** 7   # batches: one epoch longer than any benchmark


def build_shards(work: Path, images: int, bpg_images: int, jobs: int) -> tuple[dict[str, str], str]:
    """jpeg-10 in pair and split layout (``images``), bpg-46 in split layout (``bpg_images``)."""
    from pipeline.build import build
    if (IMAGENETTE / "val").is_dir():
        src, split, what = IMAGENETTE, "val", "Imagenette val (real ImageNet JPEGs)"
    else:
        from fixtures.synthetic import make_image_folder
        classes = [f"n{i:08d}" for i in range(10)]
        make_image_folder(work / "src", classes=classes, per_class=-(-images // 10), size=(300, 260))
        src, split, what = work / "src", "train", "synthetic photos"
    kw = dict(shard_size=500, jobs=jobs, progress=False)
    build(src, split, ["jpeg-10"], work / "pair", limit=images, **kw)
    build(src, split, ["jpeg-10"], work / "split", limit=images, layout="split", **kw)
    build(src, split, ["bpg-46"], work / "bpg", limit=bpg_images, layout="split", **kw)
    return ({"jpeg-10 pair": str(work / "pair" / split / "jpeg-10" / "*.tar"),
             "jpeg-10 split": str(work / "split" / split / "jpeg-10" / "*.tar"),
             "bpg-46 split": str(work / "bpg" / split / "bpg-46" / "*.tar")}, what)


# -- the modes: each an endless iterator and the samples one next() gives --------------------
def tarfile_samples(shards: list[str], decode: bool = True):
    """Python's tarfile over the shards, forever; yields the decoded comp.* (or its bytes)."""
    while True:
        for s in shards:
            with tarfile.open(s) as tar:
                for m in tar:
                    if ".comp." in m.name:
                        data = tar.extractfile(m).read()
                        yield decode_any(data) if decode else data


def lean_samples(shards: list[str]):
    while True:
        for s in shards:
            for sample in tarstream.tar_samples(s, fields=("comp",)):
                yield next(v for k, v in sample.items() if k.startswith("comp."))


def decode_only(shards: list[str]):
    data = [d for _, d in zip(range(4000), tarfile_samples(shards, decode=False))]
    while True:
        for d in data:
            yield decode_any(d)


def loader(settings, workers: int):
    spec = LoaderSpec(batch_size=32, workers=workers, shuffle_buffer=1000, seed=0)
    return iter(make_train_loader(settings, spec, epoch=0, batches=EPOCH)[0])


def stock(settings):
    from fixtures import loader_reference

    spec = LoaderSpec(batch_size=32, workers=0, shuffle_buffer=1000, seed=0)
    return iter(loader_reference.train_loader(settings, spec, epoch=0, batches=EPOCH)[0])


@contextmanager
def one_hevc_decode():
    """BPG decoding without the truncation check's second HEVC decode (what the check costs)."""
    from tools.bpg import hevc
    real = hevc.decode_annexb
    hevc.decode_annexb = hevc._decode
    try:
        yield
    finally:
        hevc.decode_annexb = real


def _children() -> set[int]:
    """Process ids of this process's children (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            out |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _cpu_seconds(pids) -> float:
    """User + system CPU time of processes (Linux /proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


class Mode:
    """One way of reading the samples, timed in rounds on the same endless iterator.  Cost =
    CPU time (this process's, or that of the loader's worker processes): other processes on
    the machine then do not decide the result.  Wall time is kept too."""

    def __init__(self, name, make, per_item=lambda x: 1, prefetch=0, seconds=None, context=None,
                 in_workers=False):
        self.name, self.make, self.per_item, self.prefetch = name, make, per_item, prefetch
        self.seconds, self.context, self.in_workers = seconds, context, in_workers
        self.it, self.pids = None, set()
        self.samples, self.cpu, self.wall = 0, 0.0, 0.0

    def _clock(self) -> float:
        return _cpu_seconds(self.pids) if self.in_workers else time.process_time()

    def run(self, seconds: float, warmup: float) -> None:
        seconds = self.seconds or seconds
        with self.context() if self.context else _nothing():
            if self.it is None:
                before = _children()
                self.it = self.make()
                t0 = time.perf_counter()
                next(self.it)                                   # the shuffle buffer's fill (and worker start)
                self.pids = _children() - before
                while time.perf_counter() - t0 < warmup:
                    next(self.it)
            for _ in range(self.prefetch):                      # made while other modes ran
                next(self.it)
            n, t0, c0 = 0, time.perf_counter(), self._clock()
            while True:
                for _ in range(4):
                    n += self.per_item(next(self.it))
                dt = time.perf_counter() - t0
                if dt >= seconds:
                    break
            cpu = self._clock() - c0
        self.samples += n
        self.wall += dt
        self.cpu += cpu

    @property
    def ms(self) -> float:
        return 1000 * self.cpu / self.samples

    @property
    def wall_ms(self) -> float:
        return 1000 * self.wall / self.samples


@contextmanager
def _nothing():
    yield


def batch_size(batch) -> int:
    return len(batch["key"])


def bench(a) -> str:
    torch.set_num_threads(1)
    work = tempfile.TemporaryDirectory(prefix="bench-loader-")
    t0 = time.perf_counter()
    patterns, what = build_shards(Path(work.name), a.images, a.bpg_images, a.jobs)
    build_s = time.perf_counter() - t0
    part = min(5.0, a.seconds)
    rows, notes = [], []
    for name, pattern in patterns.items():
        settings = group_shards(pattern)
        shards = settings[0].shards
        per_round = a.seconds / a.rounds
        modes = [Mode("tar + decode", lambda: tarfile_samples(shards)),
                 Mode("loader, 1 worker", lambda: loader(settings, 1), batch_size, prefetch=3, in_workers=True),
                 Mode("loader, in process", lambda: loader(settings, 0), batch_size),
                 Mode("before", lambda: stock(settings), batch_size),
                 Mode("read (tarfile)", lambda: tarfile_samples(shards, decode=False), seconds=part / a.rounds),
                 Mode("read (tarstream)", lambda: lean_samples(shards), seconds=part / a.rounds),
                 Mode("decode", lambda: decode_only(shards), seconds=part / a.rounds)]
        if name.startswith("bpg"):
            modes = [m for m in modes if m.name in ("tar + decode", "loader, 1 worker", "decode")]
            modes.append(Mode("decode, one HEVC pass", lambda: decode_only(shards), seconds=part / a.rounds,
                              context=one_hevc_decode))
        for r in range(a.rounds):
            for m in modes:
                m.run(per_round, a.warmup)
                print(f"{name} round {r}: {m.name}: {m.ms:.3f} ms CPU / sample ({m.wall_ms:.3f} ms wall)", flush=True)
        ms = {m.name: m.ms for m in modes}
        count = settings[0].count
        base = ms["tar + decode"]
        worker = next(m for m in modes if m.name == "loader, 1 worker")
        cell = lambda k: f"{ms[k]:.3f}" if k in ms else "—"  # noqa: E731
        rows.append([name, str(count), f"{base:.3f}", f"{ms['loader, 1 worker']:.3f}",
                     f"{ms['loader, 1 worker'] / base:.2f}", f"{1000 / worker.wall_ms:.0f}",
                     cell("loader, in process"), cell("before"),
                     f"{ms['before'] / base:.2f}" if "before" in ms else "—",
                     cell("read (tarfile)"), cell("read (tarstream)"), cell("decode")])
        if "decode, one HEVC pass" in ms:
            notes.append(f"{name}: decoding takes {ms['decode']:.2f} ms with BPG's truncation check and "
                         f"{ms['decode, one HEVC pass']:.2f} ms without it (one HEVC decode instead of two)")
        for m in modes:
            m.it = None   # ends the worker processes
    header = ["setting", "images", "tar + decode", "loader, 1 worker", "ratio", "1 worker img/s",
              "loader, in process", "before (stock stages)", "before ratio", "read: tarfile", "read: tarstream",
              "decode"]
    text = [f"Loader cost, CPU ms per sample ({what}; torch 1 thread; {a.seconds:g} s of steady state per mode and "
            f"setting "
            f"in {a.rounds} interleaved rounds, parts {part:g} s; shuffle buffer 1000, batch 32; {os.cpu_count()} "
            f"CPU(s); shards built in {build_s:.0f} s; `make bench` regenerates this table)", "",
            table(header, rows, align=["l"] + ["r"] * (len(header) - 1)), "",
            "ratio = loader, 1 worker / tar + decode (goal <= 1.2), in CPU time (the worker process's); "
            "1 worker img/s = the samples the main process received per second of wall time; before = the same plan "
            "through webdataset's stock per-sample stages (the earlier loader), in process."]
    text += [f"{n}." for n in notes]
    work.cleanup()
    return "\n".join(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="distinct images of the jpeg-10 shards")
    p.add_argument("--bpg-images", type=int, default=500, help="distinct images of the bpg-46 shards")
    p.add_argument("--seconds", type=float, default=20.0, help="timed steady state per mode and setting")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds after the shuffle buffer's fill")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="jobs for building the shards")
    p.add_argument("--markdown", default=None)
    p.add_argument("--json", default=None, help="the results file the docs block is rendered from (docsgen/readme_block.py)")
    a = p.parse_args(argv)
    text = bench(a)
    print(text)
    if a.markdown:
        atomic_write(a.markdown, text + "\n")
    if a.json:
        from docsgen.readme_block import save
        save(a.json, text, "benchmarks/bench_loader.py", sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
