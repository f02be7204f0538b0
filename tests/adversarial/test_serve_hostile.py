"""m2m-serve under hostile traffic, spoken to over real sockets: idle and half-open
connections, what the HTTP parser refuses, every error path of the app, the memory held by
request bodies, clients that write their whole body before reading, a port it cannot bind,
and a model whose output is not finite.

Every error answer is the service's one-line JSON ``error`` and is counted in /v1/stats."""
from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the [serve] extra (starlette, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the [serve] extra (starlette, uvicorn) is not installed")

from tests.conftest import ROOT, synthetic_rgb  # noqa: E402
from tests.zoo_helpers import ARCH, entry_of, free_port, write_expert  # noqa: E402

from .conftest import one_error  # noqa: E402

pytestmark = pytest.mark.slow

MiB = 1 << 20
MAX_CONNECTIONS = 48
#: the server's open-file limit: what MAX_CONNECTIONS needs, far below the sockets a client opens
NOFILE = 160
START_S = 300


def _nan_expert(folder: Path) -> None:
    """A jpeg-10 expert whose classifier bias is NaN: every logit it gives is NaN."""
    import torch

    from trainer import checkpoint
    write_expert(folder, [entry_of("jpeg-10", 0.9)], seed=3)
    state = torch.load(folder / "best.pth", weights_only=True)
    last_bias = [k for k in state["model"] if k.endswith(".bias")][-1]
    state["model"][last_bias] = torch.full_like(state["model"][last_bias], float("nan"))
    checkpoint.save(state, folder / "best.pth")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    import torch

    from trainer.models import build_model
    root = tmp_path_factory.mktemp("zoo")
    _nan_expert(root / "runs" / "jpeg-10")
    torch.manual_seed(9)
    torch.save(build_model(ARCH, None, 10).net.state_dict(), root / "default.pth")
    return root


def _limit_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture(scope="module")
def server(zoo, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    cmd = [sys.executable, "-m", "receiver.serve", "--experts", str(zoo / "runs"),
           "--default", str(zoo / "default.pth"), "--arch", ARCH, "--port", str(port), "--threads", "1",
           "--max-body", str(MiB), "--max-buffered", str(3 * MiB), "--timeout", "20", "--header-timeout", "2",
           "--max-connections", str(MAX_CONNECTIONS), "--decode-processes", "1", "--decode-threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT,
                                preexec_fn=_limit_files)
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"m2m-serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if _request(port, "GET", "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"m2m-serve did not answer /health within {START_S} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield port, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, r.getheader("content-type"), r.read()
    finally:
        conn.close()


def _json(port: int, method: str, path: str, body: bytes | None = None):
    status, _, data = _request(port, method, path, body)
    return status, json.loads(data)


def _statuses(port: int) -> dict:
    return _json(port, "GET", "/v1/stats")[1]["statuses"]


def _raw(port: int, request: bytes, timeout: float = 30) -> bytes:
    """Send bytes as they are; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            part = s.recv(65536)
            if not part:
                return data
            data += part


def _parse(answer: bytes) -> tuple[int, dict, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _one_line_error(body: dict) -> str:
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    return body["error"]


def _jpeg() -> bytes:
    from pipeline.codecs import create
    return create("jpeg", 10).encode(synthetic_rgb(224, 224, seed=1))


def _png() -> bytes:
    from pipeline.codecs import create
    return create("lossless", None).encode(synthetic_rgb(224, 224, seed=2))


# --------------------------------------------------------------------------- error answers

RAW_CASES = {
    "two Content-Lengths": (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
                            b"abcd", 400, "Content-Length"),
    "Content-Length -1": (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400,
                          "Content-Length"),
    "garbage request line": (b"\x16\x03\x01 hello there\r\n\r\n", 400, "request line"),
    # RFC 9112 section 6.3: a request with both framings is refused, not read by one of them
    "Content-Length with chunked": (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400,
                                    "Transfer-Encoding"),
    "GET on classify": (b"GET /v1/classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "POST"),
    "OPTIONS on classify": (b"OPTIONS /v1/classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "POST"),
    "unknown path": (b"GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "/v1/classify"),
    # a trailing slash is not redirected (a client following a 307 would resend or drop the body)
    "trailing slash": (b"POST /v1/classify/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
                       b"abc", 404, "/v1/classify"),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_every_error_answer_is_one_line_json_and_counted(server, case):
    port = server[0]
    request, want, named = RAW_CASES[case]
    before = _statuses(port)
    status, headers, body = _parse(_raw(port, request))
    assert status == want, (case, body)
    assert headers["content-type"].startswith("application/json")
    assert named in _one_line_error(body)
    after = _statuses(port)
    assert after.get(str(want), 0) == before.get(str(want), 0) + 1, (before, after)


def test_non_finite_logits_are_that_pictures_error_and_the_batch_is_answered(server):
    from receiver.serve import join_frames
    port = server[0]
    status, body = _json(port, "POST", "/v1/classify", _jpeg())      # routed to the NaN expert
    assert status == 500 and "not finite" in _one_line_error(body)
    status, answers = _json(port, "POST", "/v1/classify/batch", join_frames([_jpeg(), _png(), _jpeg()]))
    assert status == 200 and len(answers) == 3
    assert "not finite" in answers[0]["error"] and answers[0]["top"] == []
    assert answers[1]["error"] is None and len(answers[1]["top"]) == 5 and answers[1]["expert"] == "default"
    assert "not finite" in answers[2]["error"]


def test_predict_json_never_writes_nan(zoo, tmp_path, capsys):
    from receiver import predict
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "b.png").write_bytes(_png())
    rc = predict.main(["--experts", str(zoo / "runs"), "--default", str(zoo / "default.pth"), "--arch", ARCH,
                       "--device", "cpu", "--json", str(tmp_path / "a.jpg"), str(tmp_path / "b.png")])
    out, err = capsys.readouterr()

    def no_constant(token):
        raise AssertionError(f"bare {token} in the JSON output")
    answers = json.loads(out, parse_constant=no_constant)
    assert rc == 1 and "not finite" in answers[0]["error"] and answers[1]["error"] is None
    assert "a.jpg" in err and "not finite" in err


# --------------------------------------------------------------------------- connections

def test_half_open_connections_neither_exhaust_files_nor_stop_health(server):
    """More half-open sockets than the server's open-file limit: the oldest are closed to make
    room, /health is answered, and a socket that never finishes its headers gets 408."""
    port, proc, _ = server
    partial = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Le"
    held = []
    try:
        for _ in range(NOFILE + 100):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(partial)
            held.append(s)
        status, body = _json(port, "GET", "/health")
        assert status == 200 and body["status"] == "ok"
        # the newest half-open socket is never the one closed to make room: --header-timeout ends it
        last = held[-1]
        answer = b""
        while True:
            part = last.recv(65536)
            if not part:
                break
            answer += part
        status, _, body = _parse(answer)
        assert status == 408 and "--header-timeout" in _one_line_error(body)
    finally:
        for s in held:
            s.close()
    assert proc.poll() is None and _json(port, "GET", "/health")[0] == 200


def test_a_413_reaches_a_client_that_writes_its_whole_body_first(server):
    """urllib sends the whole body before reading: the server reads and drops it (bounded)
    after its 413, instead of closing into a reset."""
    port = server[0]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify", data=b"\xff" * (8 * MiB), method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=60)
    assert caught.value.code == 413
    assert "--max-body" in _one_line_error(json.loads(caught.value.read()))


def test_bodies_held_at_once_stay_within_max_buffered(server):
    """Three 1 MiB bodies in flight fill --max-buffered (3 MiB): a fourth gets 503 at once,
    although each is within --max-body and --max-inflight."""
    port = server[0]
    head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: {MiB}\r\n\r\n".encode()
    held = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(head + b"\xff" * 100)
            held.append(s)
        deadline = time.monotonic() + 30
        while _json(port, "GET", "/v1/stats")[1]["buffered_bytes"] < 3 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = _json(port, "POST", "/v1/classify", b"\xff" * MiB)
        assert status == 503 and "--max-buffered" in _one_line_error(body)
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 30
    while _json(port, "GET", "/v1/stats")[1]["buffered_bytes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _json(port, "GET", "/v1/stats")[1]["buffered_bytes"] == 0
    assert _json(port, "POST", "/v1/classify", _png())[0] == 200


def test_max_body_over_max_buffered_is_a_usage_error(capsys):
    from receiver import serve
    assert serve.main(["--default", "pretrained", "--arch", ARCH, "--max-body", "200", "--max-buffered", "100"]) == 2
    assert "--max-buffered" in one_error(capsys.readouterr().err)


# --------------------------------------------------------------------------- binding

def test_a_busy_port_is_one_error_before_any_model_loads(tmp_path, capsys):
    from receiver import serve
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        # the experts do not exist: had they been loaded first, that would be the error
        rc = serve.main(["--experts", str(tmp_path / "missing"), "--port", str(port)])
    line = one_error(capsys.readouterr().err)
    assert rc == 2 and str(port) in line and "missing" not in line


def test_a_host_that_is_not_this_machines_is_one_error(tmp_path, capsys):
    from receiver import serve
    rc = serve.main(["--experts", str(tmp_path / "missing"), "--host", "no-such-host.invalid",
                     "--port", str(free_port())])
    line = one_error(capsys.readouterr().err)
    assert rc == 2 and "no-such-host.invalid" in line


# --------------------------------------------------------------------------- decoding

def test_a_decode_worker_that_dies_takes_no_request_down():
    """Decodes run in worker processes (a decoder holding the GIL cannot stall the server's
    event loop); a worker killed (a decoder crash, the OOM killer) fails the decodes queued
    with it, and each is tried again on a fresh pool."""
    import asyncio
    import signal

    import numpy as np

    from pipeline.codecs import probe
    from receiver.core import decode_input
    from receiver.serve import DecodePool

    data = _png()
    probed = probe(data)

    async def decode_around_a_kill():
        pool = DecodePool(1, ThreadPoolExecutor(1))
        await pool.start()
        try:
            first = await pool.decode(data, probed, "first", None)
            workers = list(pool._pool._processes)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            second = await pool.decode(data, probed, "second", None)
            return workers, first, second, list(pool._pool._processes)
        finally:
            pool.shutdown()

    workers, (x1, p1), (x2, p2), fresh = asyncio.run(decode_around_a_kill())
    assert workers and os.getpid() not in workers and not set(workers) & set(fresh)
    x_ref, _ = decode_input(data, probed, "ref")
    assert np.array_equal(x1, x_ref) and np.array_equal(x2, x_ref) and p2.file == "second"
