"""m2m-serve as a real server: a subprocess on a loopback port, spoken to over HTTP.

Its answers equal ``predict --experts`` on the same files, under concurrency too; bad
requests get a 4xx status with a one-line reason and the server stays up within its memory
bound."""
from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the [serve] extra (starlette, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the [serve] extra (starlette, uvicorn) is not installed")

from tests.conftest import ROOT, synthetic_rgb  # noqa: E402
from tests.zoo_helpers import ARCH, entry_of, free_port, serving, write_expert  # noqa: E402
from receiver.serve import join_frames  # noqa: E402

pytestmark = pytest.mark.slow

#: peak resident memory the server may reach in this test: four small models, torch, and no
#: allocation driven by what a request declares
RSS_BOUND_MB = 1536
TIMEOUT_S = 3
#: start-up (imports, four models) on a busy 2-core machine
MAX_INFLIGHT = 20


def _j2k_declaring(width: int, height: int) -> bytes:
    from pipeline.codecs import create
    data = bytearray(create("j2k", 200, container="j2k").encode(synthetic_rgb(32, 32, seed=0)))
    assert data[:4] == b"\xff\x4f\xff\x51"
    data[8:16] = width.to_bytes(4, "big") + height.to_bytes(4, "big")       # SIZ Xsiz, Ysiz
    return bytes(data)


def _jpeg_declaring(width: int, height: int) -> bytes:
    from pipeline.codecs import create
    data = bytearray(create("jpeg", 50).encode(synthetic_rgb(16, 16, seed=0)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _bpg_declaring(width: int, height: int) -> bytes:
    from tools.bpg.container import write_ue7
    from pipeline.codecs import create
    data = create("bpg", 41, effort=1).encode(synthetic_rgb(16, 16, seed=0))
    # magic, 2 flag bytes, then ue7 width and height (16 and 16: one byte each)
    return data[:6] + write_ue7(width) + write_ue7(height) + data[8:]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from pipeline.codecs import create
    folder = tmp_path_factory.mktemp("received")
    out = {}
    for i, (setting, codec, q, opts) in enumerate([("jpeg-10", "jpeg", 10, {}), ("j2k-200", "j2k", 200, {}),
                                                  ("bpg-41", "bpg", 41, {"effort": 1}),
                                                  ("lossless", "lossless", None, {})]):
        for j, (h, w) in enumerate([(224, 224), (180, 300)]):
            path = folder / f"img{i}{j}.bin"          # no telling extension: routing reads content
            path.write_bytes(create(codec, q, **opts).encode(synthetic_rgb(h, w, seed=10 * i + j)))
            out[path.name] = path
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    import torch

    from trainer.models import build_model
    root = tmp_path_factory.mktemp("zoo")
    for seed, (name, bpp) in enumerate([("jpeg-10", 0.9), ("j2k-200", 0.12), ("bpg-41", 0.5)]):
        write_expert(root / "runs" / name, [entry_of(name, bpp)], seed=seed)
    torch.manual_seed(9)
    torch.save(build_model(ARCH, None, 10).net.state_dict(), root / "default.pth")
    return root


@pytest.fixture(scope="module")
def server(zoo, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    cmd = [sys.executable, "-m", "receiver.serve", "--experts", str(zoo / "runs"),
           "--default", str(zoo / "default.pth"), "--arch", ARCH, "--host", "127.0.0.1", "--port", str(port),
           "--max-body", str(4 << 20), "--timeout", str(TIMEOUT_S), "--threads", "2",
           "--max-inflight", str(MAX_INFLIGHT)]
    with serving(cmd, port, log, ROOT) as proc:
        yield port, proc, log


def _request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _get(port, path):
    return _request(port, "GET", path, timeout=5)


def _post(port, body, path="/v1/classify"):
    return _request(port, "POST", path, body)


@pytest.fixture(scope="module")
def reference(zoo, files):
    """``predict --experts --json`` of every file, by file name."""
    import contextlib
    import io

    from receiver import predict
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = predict.main(["--experts", str(zoo / "runs"), "--default", str(zoo / "default.pth"), "--arch", ARCH,
                           "--device", "cpu", "--json", *map(str, files.values())])
    assert rc == 0
    return {Path(p["file"]).name: p for p in json.loads(out.getvalue())}


def _same(answer: dict, ref: dict) -> None:
    for key in ("codec", "bytes", "received_size", "cropped", "expert", "route", "error"):
        assert answer[key] == ref[key], key
    assert [t["index"] for t in answer["top"]] == [t["index"] for t in ref["top"]]
    assert [t["prob"] for t in answer["top"]] == pytest.approx([t["prob"] for t in ref["top"]], abs=1e-5)


def test_answers_equal_predict_and_name_the_expert(server, files, reference):
    port = server[0]
    experts = set()
    for name, path in files.items():
        status, answer = _post(port, path.read_bytes())
        assert status == 200, answer
        _same(answer, reference[name])
        experts.add(Path(answer["expert"]).name if answer["expert"] != "default" else "default")
    # every expert and the default answered something, and they do not all agree
    assert experts == {"jpeg-10", "j2k-200", "bpg-41", "default"}
    assert len({tuple(t["index"] for t in r["top"]) for r in reference.values()}) > 1


def test_batch_form_answers_each_frame_in_order(server, files, reference):
    names = list(files)
    bodies = [files[n].read_bytes() for n in names] + [b"not an image"]
    status, answers = _post(server[0], join_frames(bodies), "/v1/classify/batch")
    assert status == 200 and len(answers) == len(names) + 1
    for n, a in zip(names, answers):
        _same(a, reference[n])
    assert answers[-1]["error"] and answers[-1]["top"] == []
    status, answer = _post(server[0], b"\x00\x00\x00\x09abc", "/v1/classify/batch")
    assert status == 400 and "frame 0" in answer["error"]


def test_sixteen_concurrent_clients_get_their_own_answers(server, files, reference):
    port = server[0]
    jobs = [name for _ in range(3) for name in files] * 2          # 48 requests
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: (n, _post(port, files[n].read_bytes())), jobs))
    for name, (status, answer) in results:
        assert status == 200, answer
        _same(answer, reference[name])
    stats = _get(port, "/v1/stats")[1]
    assert stats["mean_batch"] > 1, stats          # concurrent requests shared forwards


def _raw(port: int, head: bytes, body_chunks, pause: float = 0.0, read_timeout: float = 15) -> tuple[int, str]:
    """Send a hand-made request (the body in chunks, ``pause`` s apart, stopping when the server
    has answered); return (status, error reason)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        s.sendall(head)
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
            except OSError:            # the server answered and closed: read what it said
                break
            if pause:
                time.sleep(pause)
                s.setblocking(False)
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        break
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
                    s.settimeout(read_timeout)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            data += part
    finally:
        s.close()
    head_text, _, body = data.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), json.loads(body)["error"]


def test_bad_requests_get_4xx_with_one_line_and_the_server_stays_up(server, files):
    port, proc, _ = server
    good = files["img00.bin"].read_bytes()
    png = files["img30.bin"].read_bytes()
    cases = {
        "empty": (b"", 400),
        "truncated": (good[: len(good) // 3], 422),
        "wrong magic": (b"GIF89a" + good[6:], 422),
        # a PNG signature in front of a JPEG: routed as PNG by its magic, and refused by the PNG decoder
        "polyglot": (png[:16] + good, 422),
        "jpeg 65500x65500": (_jpeg_declaring(65500, 65500), 413),
        "j2k 65500x65500": (_j2k_declaring(65500, 65500), 413),
        "bpg 65500x65500": (_bpg_declaring(65500, 65500), 413),
    }
    for what, (body, want) in cases.items():
        status, answer = _post(port, body)
        assert status == want, (what, answer)
        assert answer["error"] and "\n" not in answer["error"], what
    # 100 MB announced: refused from the header, before the body is read
    status, reason = _raw(port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n",
                          (b"\xff" * (1 << 20) for _ in range(100)))
    assert status == 413 and "104,857,600" in reason
    # 100 MB chunked (no length announced): refused once past the limit
    chunk = b"100000\r\n" + b"\xff" * 0x100000 + b"\r\n"
    status, reason = _raw(port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                          (chunk for _ in range(100)))
    assert status == 413 and "limit" in reason
    assert proc.poll() is None and _get(port, "/health")[0] == 200


def test_a_slow_client_is_cut_off_and_others_are_served_meanwhile(server, files, reference):
    port = server[0]
    good = files["img10.bin"].read_bytes()
    head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: {len(good)}\r\n\r\n".encode()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_raw, port, head, (good[i:i + 1] for i in range(len(good))), 0.25)
        deadline = time.monotonic() + 30
        while _get(port, "/health")[1]["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)                          # the slow request holds its slot
        status, answer = _post(port, good)
        # served while the slow client dribbles: its answer (a 408 at --timeout) has not come yet,
        # an order of events rather than a wall-clock bound a loaded machine could break
        assert status == 200 and not slow.done()
        _same(answer, reference["img10.bin"])
        status, reason = slow.result(timeout=120)
    assert status == 408 and "--timeout" in reason


def test_requests_past_max_inflight_get_503_at_once(server, files):
    port = server[0]
    good = files["img00.bin"].read_bytes()
    head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: {len(good)}\r\n\r\n".encode()
    held = []
    try:
        for _ in range(MAX_INFLIGHT):          # each holds a slot, its body unfinished
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(head + good[:10])
            held.append(s)
        deadline = time.monotonic() + 5
        while _get(port, "/health")[1]["in_flight"] < MAX_INFLIGHT and time.monotonic() < deadline:
            time.sleep(0.05)
        status, answer = _post(port, good)   # answered while every slot is still held: at once
        assert status == 503 and "--max-inflight" in answer["error"]
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while _get(port, "/health")[1]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _post(port, good)[0] == 200


def test_models_health_logs_and_memory(server, files):
    port, proc, log = server
    assert _post(port, files["img10.bin"].read_bytes())[0] == 200     # at least one logged j2k request
    status, models = _get(port, "/v1/models")
    assert status == 200
    assert {m["name"].rsplit("/", 1)[-1]: m["role"] for m in models} == {
        "jpeg-10": "specialist", "j2k-200": "specialist", "bpg-41": "specialist", "default": "default"}
    assert _get(port, "/health") == (200, {"status": "ok", "experts": 3, "default": True, "in_flight": 0})
    lines = [ln for ln in log.read_text().splitlines() if "POST /v1/classify " in ln]
    assert lines and all(" codec=" in ln and " bytes=" in ln and " route=" in ln and ln.endswith(" ms")
                         for ln in lines)
    assert any("codec=j2k" in ln and "j2k-200" in ln for ln in lines)
    status_text = Path(f"/proc/{proc.pid}/status").read_text()
    peak_kb = int(next(ln.split()[1] for ln in status_text.splitlines() if ln.startswith("VmHWM:")))
    assert peak_kb < RSS_BOUND_MB * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
