"""Tiny expert zoos for the routing and serving tests: run folders whose checkpoints carry the
contract's ``trained_on`` (from a real manifest when there is one) around a small random model."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

ARCH = "mobilenet_v3_small"
CROP = 224 * 224


def trained_on_entry(manifest) -> dict:
    """The ``trained_on`` entry the trainer writes for a setting folder (the contract's fields)."""
    return {"setting": manifest.name, "codec": manifest.codec, "q": manifest.q,
            "bytes_per_image": manifest.mean("bytes"), "bpp": manifest.mean("bpp"),
            "pixels_per_image": CROP, "weight": 1.0}


def entry_of(setting: str, bpp: float | None) -> dict:
    """A ``trained_on`` entry from a setting name and a rate (no manifest)."""
    from pipeline.setting import Setting
    s = Setting.parse(setting)
    return {"setting": s.name, "codec": s.codec, "q": s.q, "bytes_per_image": None if bpp is None else bpp * CROP / 8,
            "bpp": bpp, "pixels_per_image": CROP, "weight": 1.0}


def write_expert(folder: Path, trained_on: list[dict] | None, seed: int, num_classes: int = 10,
                 favour: int | None = None) -> Path:
    """A run folder (args.json + best.pth) of a random ``ARCH`` with these settings; ``favour``:
    a class it answers whatever the image."""
    import torch

    from trainer import checkpoint
    from trainer.models import build_model

    torch.manual_seed(seed)
    model = build_model(ARCH, None, num_classes)
    # a random head of some spread: each expert answers differently (a fresh one is near uniform)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, std=0.5)
    torch.nn.init.normal_(head.bias, std=0.5)
    if favour is not None:
        with torch.no_grad():
            head.bias[favour] += 100.0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "args.json").write_text(json.dumps({"arch": ARCH}))
    state = {"model": model.net.state_dict(), "arch": ARCH, "num_classes": num_classes, "epoch": 1,
             "args": {"arch": ARCH}, "bn": "train"}
    if trained_on is not None:
        state["trained_on"] = trained_on
    checkpoint.save(state, folder / "best.pth")
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: how long a test server may take to load its models and answer /health
START_S = 300


@contextmanager
def serving(cmd: list[str], port: int, log: Path, cwd: Path, preexec_fn=None):
    """A ``receiver.serve`` process (``cmd``, its output in ``log``) once it answers ``/health``
    on ``port``; terminated on exit.  A server that exits or never answers fails the test."""
    import pytest

    env = {**os.environ, "PYTHONPATH": str(cwd)}
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=err, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    try:
        deadline = time.monotonic() + START_S
        while not _healthy(port):
            if proc.poll() is not None:
                pytest.fail(f"m2m-serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"m2m-serve did not answer /health within {START_S} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
