"""m2m-serve at steady state: requests/s and latency at 1, 8 and 32 concurrent clients, in fp32
and in bf16 (``--precision``), beside the model's own forward rate at the server's mean batch size.

    python benchmarks/bench_serve.py [--seconds 20] [--clients 1,8,32] [--precisions fp32,bf16]
                                     [--markdown bench-out/serve.md] [--json benchmarks/results/serve.json]

The server (MobileNetV2, ImageNet weights from ../shared/weights when present) runs as its own
process on a loopback port; the clients are threads of this process, each with one kept-alive
HTTP connection, sending 224² JPEG quality-10 crops of Imagenette val images (synthetic photos
when ../shared is absent) one after another.  Each point runs ``--warmup`` seconds, then
``--seconds`` are timed: start-up and warm-up are excluded.  The latency is split with the
server's own counters (``GET /v1/stats``) into decode (probe, route, decode), the wait for a
micro-batch, the forward of that batch, and the rest (HTTP, JSON, the client).  The model's own
rate is ``receiver.core.classify`` (the same tensor work as the server's forward, in the same
precision) at the server's mean batch size over that point, in this process right after it,
the servers idle; a mean between two whole sizes is the interpolation of the time per image
measured at both.  One server per precision runs from the start; at each client count the
precisions take turns (which goes first alternates), so that both meet the machine alike.
Without native bf16 only fp32 is measured.  Clients and servers share the machine's cores.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from trainer import precision  # noqa: E402

SHARED = Path(os.environ.get("M2M_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
ARCH = "mobilenet_v2"


def jpeg10_images(n: int) -> tuple[list[bytes], str]:
    """``n`` 224² JPEG quality-10 bitstreams and where their pictures came from."""
    from PIL import Image

    from pipeline.codecs import create
    from pipeline.crops import crop_image

    codec = create("jpeg", 10)
    files = sorted((SHARED / "imagenette" / "val").glob("*/*"))
    if files:
        step = max(1, len(files) // n)
        out = []
        for f in files[::step][:n]:
            with Image.open(f) as img:
                out.append(codec.encode(crop_image(img.convert("RGB"))))
        return out, "Imagenette val crops"
    from fixtures.synthetic import synthetic_rgb
    return [codec.encode(synthetic_rgb(224, 224, seed=i)) for i in range(n)], "synthetic photos"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_server(port: int, weights: str | None, log_path: Path, extra: list[str]) -> subprocess.Popen:
    """m2m-serve on ``port`` (``extra``: more options, e.g. --precision), once it answers /health."""
    cmd = [sys.executable, "-m", "receiver.serve", "--arch", ARCH, "--port", str(port),
           "--default", weights or "random", "--max-inflight", "256", *extra]
    if weights is None:   # no weights file: a random MobileNetV2 (the same work per image)
        import torch

        from trainer.models import build_model
        path = log_path.parent / "random-mobilenet_v2.pth"
        torch.save(build_model(ARCH, None, 1000).net.state_dict(), path)
        cmd[cmd.index("random")] = str(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: m2m-serve exited with {proc.returncode}: {log_path.read_text()[-1500:]}")
        try:
            if get_json(port, "/health").get("status") == "ok":
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("error: m2m-serve did not start within 180 s")


def run_point(port: int, images: list[bytes], clients: int, warmup: float, seconds: float) -> dict:
    """``clients`` threads sending back to back; the timed window's throughput, latency and the
    server's counters over that window."""
    done: list[tuple[float, float]] = []      # (end time, latency) of every answered request
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        while not stop.is_set():
            body = images[i % len(images)]
            i += clients
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/classify", body=body)
                r = conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            t1 = time.perf_counter()
            if r.status != 200:
                failures.append(f"HTTP {r.status}")
                continue
            with lock:
                done.append((t1, t1 - t0))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    s0, w0 = get_json(port, "/v1/stats"), time.perf_counter()
    time.sleep(seconds)
    s1, w1 = get_json(port, "/v1/stats"), time.perf_counter()
    stop.set()
    for t in threads:
        t.join(60)
    if failures:
        sys.exit(f"error: {len(failures)} request(s) failed at {clients} clients, e.g. {failures[0]}")
    lat = np.array([d for t, d in done if w0 <= t <= w1])
    d = {k: s1[k] - s0[k] for k in ("requests", "images", "decode_s", "wait_s", "image_forward_s", "handler_s",
                                     "forwards", "batched_images")}
    n_img = max(d["images"], 1)
    mean_ms = 1000 * float(lat.mean())
    parts = {"decode": 1000 * d["decode_s"] / n_img, "batch wait": 1000 * d["wait_s"] / n_img,
             "forward": 1000 * d["image_forward_s"] / n_img}
    parts["HTTP and rest"] = max(0.0, mean_ms - sum(parts.values()))
    return {"clients": clients, "seconds": w1 - w0, "requests": int(lat.size), "rps": lat.size / (w1 - w0),
            "p50_ms": 1000 * float(np.percentile(lat, 50)), "p99_ms": 1000 * float(np.percentile(lat, 99)),
            "mean_ms": mean_ms, "mean_batch": d["batched_images"] / max(d["forwards"], 1),
            "parts_ms": parts}


def load_model_alone(weights: str | None, prec):
    """The served model in this process, in the layout of ``prec`` (as ``load_zoo`` makes it)."""
    from trainer.models import build_model, load_model
    model = (load_model(weights, arch=ARCH)[0] if weights else build_model(ARCH, None, 1000)).eval()
    return prec.prepare(model)


def forward_rate(model, batch: int, seconds: float, prec) -> float:
    """Images/s of the model alone (receiver.core.classify: to float, forward in ``prec``, softmax,
    top-5) at ``batch``."""
    from receiver.core import classify

    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]
    for _ in range(3):
        classify(model, xs, "cpu", 5, prec)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        classify(model, xs, "cpu", 5, prec)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def rate_at_mean_batch(model, mean_batch: float, seconds: float, prec) -> tuple[float, list[int]]:
    """The model alone at a mean batch size: measured at the whole size, or (between two) the
    time per image interpolated between both; (img/s, the sizes measured)."""
    lo = max(1, int(np.floor(mean_batch)))
    hi = max(lo, int(np.ceil(mean_batch)))
    if hi == lo:
        return forward_rate(model, lo, seconds, prec), [lo]
    t_lo = 1 / forward_rate(model, lo, seconds / 2, prec)
    t_hi = 1 / forward_rate(model, hi, seconds / 2, prec)
    w = mean_batch - lo
    return 1 / ((1 - w) * t_lo + w * t_hi), [lo, hi]


def markdown(points: list[dict], source: str, weights_note: str, load: float, threads: int) -> str:
    rows = []
    for p in points:
        parts = p["parts_ms"]
        total = sum(parts.values()) or 1.0
        rows.append([p["precision"], p["clients"], f"{p['rps']:.1f}", f"{p['p50_ms']:.0f}", f"{p['p99_ms']:.0f}",
                     f"{p['mean_batch']:.1f}",
                     *(f"{100 * parts[k] / total:.0f}%" for k in ("decode", "batch wait", "forward", "HTTP and rest")),
                     f"{p['model_rate']:.1f}", f"{p['rps'] / p['model_rate']:.2f}"])
    head = ["precision", "clients", "requests/s", "p50 ms", "p99 ms", "mean batch", "decode", "batch wait", "forward",
            "HTTP and rest", "model alone, img/s (at the mean batch)", "served / model"]
    text = table(head, rows)
    precs = list(dict.fromkeys(p["precision"] for p in points))
    if len(precs) > 1:
        by = {(p["precision"], p["clients"]): p["rps"] for p in points}
        clients = list(dict.fromkeys(p["clients"] for p in points))
        ratio = [[c, *(f"{by[(q, c)]:.1f}" for q in precs), f"{by[(precs[1], c)] / by[(precs[0], c)]:.2f}x"]
                 for c in clients]
        text += "\n\n" + table(["clients", *(f"{q} requests/s" for q in precs), f"{precs[1]} / {precs[0]}"], ratio)
    return (f"m2m-serve with MobileNetV2 ({weights_note}) on {precision.cpu_words()}, 224² JPEG quality-10 "
            f"bitstreams ({source}); clients on the same cores; forwards on {threads} thread(s), in the server "
            f"(`--threads {threads}`) and for the model alone; {points[0]['seconds']:.0f} s timed per point "
            f"after warm-up, the precisions taking turns at each client count.  Shares: of the mean latency.  "
            f"The 1-minute load average, read after each point, was {load:.1f} at its highest: other processes "
            f"shared the cores when above {os.cpu_count()}.\n\n{text}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per point (at least 20 for the docs)")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--forward-seconds", type=float, default=8.0)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--precisions", default="fp32,bf16",
                   help="the servers' --precision, compared side by side (bf16 is left out without native bf16)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of a forward, in the server (--threads) and for the model alone; 1 leaves "
                        "the other core of a 2-core machine to decoding, HTTP and the clients")
    p.add_argument("--markdown", default=None)
    p.add_argument("--json", default=None, help="the results file docs/receiver.md's block is rendered from")
    a = p.parse_args(argv)
    clients = [int(c) for c in a.clients.split(",")]
    weights = str(WEIGHTS) if WEIGHTS.is_file() else None
    images, source = jpeg10_images(a.images)
    import torch
    torch.set_num_threads(a.threads)
    names = [q for q in a.precisions.split(",") if q]
    native, why = precision.native_bf16("cpu")
    if "bf16" in names and not native:
        print(f"bench_serve: bf16 left out, this CPU has no native bf16 ({why})", file=sys.stderr)
        names.remove("bf16")
    precs = [precision.resolve(q, "cpu") for q in names]
    models = {q.name: load_model_alone(weights, q) for q in precs}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        servers = {}
        try:
            for q in precs:
                port = free_port()
                servers[q.name] = (port, start_server(port, weights, Path(tmp) / f"serve-{q.name}.log",
                                                      ["--threads", str(a.threads), "--precision", q.name]))
            points = []
            for i, c in enumerate(clients):
                for q in (precs if i % 2 == 0 else precs[::-1]):
                    pt = run_point(servers[q.name][0], images, c, a.warmup, a.seconds)
                    pt["precision"] = q.name
                    pt["load_average"] = os.getloadavg()[0]
                    # the model alone right after, the servers idle: the same conditions of the machine
                    pt["model_rate"], pt["model_batches"] = rate_at_mean_batch(models[q.name], pt["mean_batch"],
                                                                               a.forward_seconds, q)
                    points.append(pt)
                    print(f"{q.name} {c:>3} clients: {pt['rps']:.1f} req/s, p50 {pt['p50_ms']:.0f} ms, "
                          f"p99 {pt['p99_ms']:.0f} ms, batch {pt['mean_batch']:.1f}; model alone at that batch "
                          f"{pt['model_rate']:.1f} img/s", file=sys.stderr, flush=True)
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait(30)
    order = {q.name: k for k, q in enumerate(precs)}
    points.sort(key=lambda pt: (order[pt["precision"]], clients.index(pt["clients"])))
    text = markdown(points, source, "ImageNet weights" if weights else "random weights: no weights file found",
                    max(p["load_average"] for p in points), a.threads)
    print(text)
    if a.markdown:
        atomic_write(a.markdown, text)
    if a.json:
        from docsgen.readme_block import save
        save(a.json, text, "benchmarks/bench_serve.py", sys.argv[1:] if argv is None else argv, points=points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
