"""m2m-serve's event loop under heavy decodes: how long ``GET /health`` waits while clients
send large JPEG 2000 pictures back to back, with the decodes in worker processes (the default,
``--decode-processes 2``) and in the server's threads (``--decode-processes 0``), side by side.

    python benchmarks/bench_serve_stall.py [--seconds 20] [--json benchmarks/results/serve-stall.json]

The heavy bitstream is a 4000x4000 JPEG 2000 codestream (16 M pixels, within the default pixel
budget; about 0.6 s to decode on one core): its decoder holds the GIL for long stretches.  Each
mode starts its own server (``benchmarks/bench_serve.py``'s), runs ``--clients`` heavy clients
for ``--warmup`` seconds, then times ``--seconds`` during which a prober asks ``/health`` every
50 ms over its own kept-alive connection; the /health latency percentiles and the heavy
requests answered per second are over the timed window only.
"""
from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_serve import WEIGHTS, free_port, start_server  # noqa: E402
from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.markdown import table  # noqa: E402

SIDE = 4000
MODES = {"worker processes (--decode-processes 2)": ["--decode-processes", "2"],
         "threads (--decode-processes 0)": ["--decode-processes", "0"]}


def heavy_j2k() -> bytes:
    from pipeline.codecs import create
    img = np.zeros((SIDE, SIDE, 3), np.uint8)
    img[::7] = 200
    img[:, ::11, 1] = 90
    return create("j2k", 400).encode(img)


def run_mode(port: int, body: bytes, clients: int, warmup: float, seconds: float) -> dict:
    stop = threading.Event()
    answered: list[float] = []
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not stop.is_set():
            try:
                conn.request("POST", "/v1/classify", body=body)
                r = conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            if r.status != 200:
                failures.append(f"HTTP {r.status}")
            answered.append(time.perf_counter())

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    lat = []
    w0 = time.perf_counter()
    while time.perf_counter() - w0 < seconds:
        t0 = time.perf_counter()
        probe.request("GET", "/health")
        probe.getresponse().read()
        lat.append(time.perf_counter() - t0)
        time.sleep(0.05)
    w1 = time.perf_counter()
    stop.set()
    for t in threads:
        t.join(120)
    if failures:
        sys.exit(f"error: {len(failures)} heavy request(s) failed, e.g. {failures[0]}")
    ms = 1000 * np.array(lat)
    return {"seconds": w1 - w0, "probes": int(ms.size), "health_p50_ms": float(np.percentile(ms, 50)),
            "health_p99_ms": float(np.percentile(ms, 99)), "health_max_ms": float(ms.max()),
            "heavy_rps": sum(w0 <= t <= w1 for t in answered) / (w1 - w0)}


def markdown(points: dict, clients: int, load: float, nbytes: int) -> str:
    rows = [[mode, f"{p['health_p50_ms']:.1f}", f"{p['health_p99_ms']:.0f}", f"{p['health_max_ms']:.0f}",
             f"{p['heavy_rps']:.2f}"] for mode, p in points.items()]
    text = table(["decodes in", "/health p50 ms", "p99 ms", "max ms", "heavy requests/s"], rows)
    return (f"`GET /health` every 50 ms while {clients} clients send a {SIDE}x{SIDE} JPEG 2000 codestream "
            f"({nbytes:,} bytes) back to back; MobileNetV2 ({'ImageNet' if WEIGHTS.is_file() else 'random'} "
            f"weights) on a 2-core x86-64 CPU, clients on the same cores; {next(iter(points.values()))['seconds']:.0f} "
            f"s timed per row after warm-up.  The 1-minute load average, read after each row, was {load:.1f} at "
            f"its highest.\n\n{text}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--json", default=None, help="the results file docs/receiver.md's block is rendered from")
    a = p.parse_args(argv)
    body = heavy_j2k()
    weights = str(WEIGHTS) if WEIGHTS.is_file() else None
    points, load = {}, 0.0
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        for mode, extra in MODES.items():
            port = free_port()
            proc = start_server(port, weights, Path(tmp) / "serve.log", ["--threads", "1", *extra])
            try:
                points[mode] = run_mode(port, body, a.clients, a.warmup, a.seconds)
                load = max(load, os.getloadavg()[0])
            finally:
                proc.terminate()
                proc.wait(30)
            print(f"{mode}: {points[mode]}", file=sys.stderr)
    text = markdown(points, a.clients, load, len(body))
    print(text)
    if a.json:
        from docsgen.readme_block import save
        save(a.json, text, "benchmarks/bench_serve_stall.py", sys.argv[1:] if argv is None else argv, points=points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
