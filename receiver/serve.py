"""``m2m-serve``: the receiver (:class:`receiver.core.Receiver`) as an HTTP service: every
received image goes to the expert of its rate.

    m2m-serve --experts runs/ --default pretrained --arch mobilenet_v2 --port 8080
    curl --data-binary @image.jpg http://127.0.0.1:8080/v1/classify

Endpoints (docs/receiver.md has the details):

- ``POST /v1/classify``: the body is one bitstream; the answer is the JSON object that
  ``predict --json`` gives for a file, with ``expert`` and ``route`` (which model answered, why);
- ``POST /v1/classify/batch``: the body is several bitstreams, each framed as a 4-byte
  big-endian length then its bytes; the answer is a JSON list, one object per frame, in
  order (a frame that fails carries ``error``; the others are answered);
- ``GET /health``, ``GET /v1/models`` (the experts and their settings), ``GET /v1/stats``
  (counters and time spent decoding and in forward passes, for the benchmark).

The listening socket is bound before the models load.  Models are loaded once at start; a
request never touches the disk.  Each request is read (bounded by ``--max-body`` and, with
all others, by one byte budget, ``--max-buffered``), its headers probed once and routed in a
thread (:meth:`Receiver.choose`: codec, size within the pixel budget, quality), its picture
decoded in a worker process (:class:`DecodePool`: a decoder holding the GIL cannot stall the
event loop); the decoded images of concurrent requests meet in a micro-batch that waits at
most ``--batch-wait-ms`` for requests still decoding, and each expert runs one forward over
its share (:meth:`Receiver.answer`).  Every answer is JSON; an error's is a one-line
``error``, counted in ``/v1/stats``; a server at its ``--max-inflight`` limit answers 503 at
once.  What happens before a request reaches the application (header time, the connection
bound, what the HTTP parser refuses, the lingering close) is :mod:`receiver.http`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import click
import numpy as np

from pipeline.limits import PixelBudgetError, max_pixels_option
from trainer.clitools import run_click
from trainer.precision import click_option as precision_option

from .core import InputError, InputTooLargeError, Prediction, Receiver, decode_input
from .http import ConnectionLimits, protocol_class
from .zoo import click_options as zoo_options
from .zoo import load_zoo

log = logging.getLogger("m2m.serve")

FRAME = struct.Struct(">I")
FRAMES_TYPE = "application/x-m2m-frames"


@dataclass(frozen=True)
class Limits:
    max_body: int = 16 << 20            # bytes of one request body
    max_inflight: int = 64              # requests being served at once
    timeout: float = 10.0               # seconds for one request, body included
    max_frames: int = 64                # bitstreams in one batch request
    max_buffered: int = 256 << 20       # bytes of request bodies held at once, all requests together


class ByteBudget:
    """The bytes of request bodies held at once, across requests: one count on the event loop
    (no lock: only the loop's thread touches it).  A request takes what it is about to hold and
    gives it back when its answer is sent; one that cannot take gets 503 at once, so that the
    memory held by bodies stays under ``total`` whatever ``--max-body`` x ``--max-inflight``."""

    def __init__(self, total: int):
        self.total, self.held = total, 0

    def take(self, n: int) -> None:
        if self.held + n > self.total:
            raise HttpError(503, f"busy: {self.held:,} bytes of request bodies held, {n:,} more would pass "
                                 f"{self.total:,} (--max-buffered)")
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


class HttpError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- micro-batching

@dataclass
class _Item:
    expert: object
    x: np.ndarray
    pred: Prediction
    done: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class Stats:
    """Counters since start; the ``*_s`` sums let a client split a steady-state interval's
    latency into its parts (the benchmark reads them from ``GET /v1/stats``)."""
    requests: int = 0
    images: int = 0
    errors: int = 0
    decode_s: float = 0.0           # per image: probe, route and decode (in the decode threads)
    wait_s: float = 0.0             # per image: decoded, until its forward starts
    image_forward_s: float = 0.0    # per image: the forward of its batch
    handler_s: float = 0.0          # per request: in the handler, body read included
    forward_s: float = 0.0          # per forward
    forwards: int = 0
    batched_images: int = 0
    statuses: dict = field(default_factory=dict)    # answers by status, those of the connection layer too
    started: float = field(default_factory=time.monotonic)

    def answered(self, status: int) -> None:
        """Count an answer (every error answer of the service comes here)."""
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status >= 400:
            self.errors += 1

    def as_dict(self) -> dict:
        d = asdict(self)
        d["uptime_s"] = time.monotonic() - d.pop("started")
        d["mean_batch"] = self.batched_images / self.forwards if self.forwards else None
        return d


class MicroBatcher:
    """Collects decoded images and runs one forward per expert over each collection.

    A collection closes when ``max_batch`` images wait, when no request is still decoding,
    or ``wait_s`` after its first image, whichever comes first; while a forward runs, the
    next collection fills by itself.  Forwards run one at a time in their own thread (torch
    uses every core for one)."""

    def __init__(self, receiver: Receiver, wait_s: float, max_batch: int, stats: Stats):
        self.receiver, self.wait_s, self.max_batch, self.stats = receiver, wait_s, max_batch, stats
        self.pending: list[_Item] = []
        self.decoding = 0
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, expert, x: np.ndarray, pred: Prediction) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(_Item(expert, x, pred, fut))
        self._wake.set()
        await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            deadline = loop.time() + self.wait_s
            while self.decoding and len(self.pending) < self.max_batch and loop.time() < deadline:
                await asyncio.sleep(min(0.0005, max(0.0, deadline - loop.time())))
            batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
            if not self.pending:
                self._wake.clear()
            batch = [it for it in batch if not it.done.done()]      # timed out meanwhile
            groups: dict[str, list[_Item]] = {}
            for it in batch:
                groups.setdefault(it.expert.name, []).append(it)
            for items in groups.values():
                t0 = time.perf_counter()
                self.stats.wait_s += sum(t0 - it.submitted for it in items)
                try:
                    await loop.run_in_executor(self._pool, self.receiver.answer, items[0].expert,
                                               [it.x for it in items], [it.pred for it in items])
                except Exception as exc:  # noqa: BLE001 - a forward failure answers its requests, the server stays
                    for it in items:
                        if not it.done.done():
                            it.done.set_exception(HttpError(500, f"forward failed ({type(exc).__name__}: {exc})"))
                    continue
                took = time.perf_counter() - t0
                self.stats.forward_s += took
                self.stats.image_forward_s += took * len(items)
                self.stats.forwards += 1
                self.stats.batched_images += len(items)
                for it in items:
                    if not it.done.done():
                        it.done.set_result(None)


# --------------------------------------------------------------------------- the service

class DecodePool:
    """Where received pictures are decoded: ``processes`` worker processes, so that a decode
    never stalls the event loop (the decoders hold the GIL for long stretches: with threads a
    6000² JPEG 2000 held ``/health`` for seconds), and a decoder that crashes or runs out of
    memory takes its worker down, not the server; with ``processes=0``, in the threads.

    A worker that dies fails every decode queued with it: each is tried once more on a fresh
    pool, and the bitstream that kills that one too is refused."""

    def __init__(self, processes: int, threads: ThreadPoolExecutor):
        self.processes, self.threads = processes, threads
        self._pool = None

    def _fresh(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        # forkserver: the workers start from a clean interpreter, not a fork of one running torch's threads
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("forkserver"))

    async def start(self) -> None:
        if self.processes:
            self._pool = self._fresh()
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._pool, _warm) for _ in range(self.processes)))

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def decode(self, data: bytes, probed, name: str, budget) -> tuple[np.ndarray, Prediction]:
        from concurrent.futures.process import BrokenProcessPool
        loop = asyncio.get_running_loop()
        if not self.processes:
            return await loop.run_in_executor(self.threads, decode_input, data, probed, name, budget)
        for attempt in range(2):
            pool = self._pool
            try:
                return await loop.run_in_executor(pool, decode_input, data, probed, name, budget)
            except BrokenProcessPool:
                if self._pool is pool:
                    log.warning("a decode worker died; starting a fresh pool")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._fresh()
        raise InputError("the decoder's process died on this bitstream (a decoder crash, or out of memory)")


def _warm() -> int:
    import receiver.core  # noqa: F401 - the decoders' imports, before the first request
    return 0


class Service:
    def __init__(self, receiver: Receiver, limits: Limits, wait_ms: float = 2.0, max_batch: int = 32,
                 decode_threads: int = 2, decode_processes: int = 0):
        self.receiver, self.limits = receiver, limits
        self.stats = Stats()
        self.wait_s, self.max_batch = wait_ms / 1000, max_batch
        self.decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        self.decoders = DecodePool(decode_processes, self.decode_pool)
        self.inflight = 0
        self.budget = ByteBudget(limits.max_buffered)
        self.batcher: MicroBatcher | None = None

    async def startup(self) -> None:
        await self.decoders.start()
        self.batcher = MicroBatcher(self.receiver, self.wait_s, self.max_batch, self.stats)
        self.batcher.start()

    async def shutdown(self) -> None:
        if self.batcher:
            await self.batcher.stop()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.decoders.shutdown()

    # -- reading a body, bounded in size and time ------------------------------------------------
    async def read_body(self, request, held: list[int]) -> bytearray:
        """The body, read into one buffer (no join), its bytes taken from the byte budget as
        they arrive (``held[0]``: what this request took, given back by the caller)."""
        headers = request.headers
        if "transfer-encoding" in headers and "content-length" in headers:
            raise HttpError(400, "both Content-Length and Transfer-Encoding: a request has one framing "
                                 "(RFC 9112 section 6.3)")
        length = headers.get("content-length")
        max_body = self.limits.max_body
        if length is not None:
            if not length.isdigit():
                raise HttpError(400, f"Content-Length {length[:32]!r} is not a number")
            if int(length) > max_body:
                raise HttpError(413, f"body of {int(length):,} bytes is over the limit of {max_body:,} (--max-body)")
            self.budget.take(int(length))
            held[0] += int(length)
        body = bytearray()
        async for chunk in request.stream():
            if len(body) + len(chunk) > max_body:
                raise HttpError(413, f"body over the limit of {max_body:,} bytes (--max-body)")
            if len(body) + len(chunk) > held[0]:
                grow = len(body) + len(chunk) - held[0]
                self.budget.take(grow)
                held[0] += grow
            body += chunk
        if not body:
            raise HttpError(400, "empty body: send the bitstream as the request body")
        return body

    # -- one bitstream ---------------------------------------------------------------------------
    async def classify_one(self, data: bytes, name: str) -> Prediction:
        """Route, decode and answer one bitstream; InputError for a bad one."""
        loop = asyncio.get_running_loop()
        self.batcher.decoding += 1
        submitted = False
        try:
            t0 = time.perf_counter()
            probed, expert, route = await loop.run_in_executor(self.decode_pool, self.receiver.choose, data)
            x, pred = await self.decoders.decode(data, probed, name, self.receiver.budget)
            pred = self.receiver.routed(pred, expert, route)
            self.stats.decode_s += time.perf_counter() - t0
            self.batcher.decoding -= 1
            submitted = True
            await self.batcher.submit(expert, x, pred)
        finally:
            if not submitted:
                self.batcher.decoding -= 1
        self.stats.images += 1
        return pred

    async def handle(self, request, batch: bool):
        from starlette.requests import ClientDisconnect

        t0 = time.perf_counter()
        self.stats.requests += 1
        info = {"codec": "-", "bytes": 0, "route": "-"}
        held = [0]                          # bytes taken from the byte budget by this request
        if self.inflight >= self.limits.max_inflight:
            status, body = 503, {"error": f"busy: {self.inflight} requests in flight (--max-inflight)"}
        else:
            self.inflight += 1
            try:
                status, body = 200, await asyncio.wait_for(self._serve(request, batch, info, held),
                                                           self.limits.timeout)
            except HttpError as exc:
                status, body = exc.status, {"error": exc.reason}
            except asyncio.TimeoutError:
                status, body = (408 if info["bytes"] == 0 else 503), {
                    "error": f"not answered within {self.limits.timeout:g} s (--timeout)"}
            except ClientDisconnect:
                status, body = 400, {"error": "the client closed the connection before sending its body"}
            except PixelBudgetError as exc:
                status, body = 413, {"error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - one request's failure is its answer; the server goes on
                log.exception("request failed")
                status, body = 500, {"error": f"internal error ({type(exc).__name__}: {str(exc)[:200]})"}
            finally:
                self.inflight -= 1
                self.budget.give(held[0])
        self.stats.handler_s += time.perf_counter() - t0
        log.info("%s %s %d codec=%s bytes=%s route=%s %.1f ms", request.method, request.url.path, status,
                 info["codec"], info["bytes"], json.dumps(info["route"]), 1000 * (time.perf_counter() - t0))
        return self.respond(body, status)

    def respond(self, body, status: int = 200, headers: dict | None = None):
        """Every answer of the app: JSON (an error's ``error`` one line), counted in the stats;
        an error that leaves the request's body unread closes the connection."""
        from starlette.responses import JSONResponse
        if status >= 400:
            body = {"error": " ".join(str(body.get("error", "")).split())}
            if status in (400, 408, 413, 503):
                headers = {**(headers or {}), "Connection": "close"}
        self.stats.answered(status)
        return JSONResponse(body, status_code=status, headers=headers)

    async def _serve(self, request, batch: bool, info: dict, held: list[int]):
        data = await self.read_body(request, held)
        info["bytes"] = len(data)
        if not batch:
            try:
                pred = await self.classify_one(data, "body")
            except InputError as exc:
                raise HttpError(413 if isinstance(exc, InputTooLargeError) else 422, str(exc)) from None
            if pred.error:                  # the model's own failure (non-finite output)
                raise HttpError(500, pred.error)
            info["codec"], info["route"] = pred.codec, f"{pred.expert}: {pred.route}" if pred.expert else "-"
            return asdict(pred)
        frames = split_frames(data, self.limits.max_frames, self.budget, held)
        del data
        results = await asyncio.gather(*(self.classify_one(f, f"part {i}") for i, f in enumerate(frames)),
                                       return_exceptions=True)
        out = []
        for i, r in enumerate(results):
            if isinstance(r, InputError):
                out.append(asdict(Prediction(file=f"part {i}", error=str(r))))
            elif isinstance(r, BaseException):
                raise r
            else:
                out.append(asdict(r))
        info["codec"] = ",".join(sorted({o["codec"] for o in out if o["codec"]})) or "-"
        info["route"] = f"{len(frames)} frames"
        return out


def split_frames(data: bytearray, max_frames: int, budget: ByteBudget | None = None,
                 held: list[int] | None = None) -> list[bytes]:
    """The bitstreams of a batch body: each a 4-byte big-endian length, then that many bytes.

    The frames are cut from the end of ``data``, which shrinks as they are (a bytearray):
    the body and its frames are never both held whole, only the body and its largest frame
    (taken from ``budget`` for the time of the cut)."""
    spans, pos = [], 0
    while pos < len(data):
        if pos + FRAME.size > len(data):
            raise HttpError(400, f"batch body: frame {len(spans)} has a truncated length field")
        (n,) = FRAME.unpack_from(data, pos)
        pos += FRAME.size
        if n == 0 or pos + n > len(data):
            raise HttpError(400, f"batch body: frame {len(spans)} declares {n} bytes, "
                                 f"{len(data) - pos} remain")
        spans.append((pos, n))
        pos += n
        if len(spans) > max_frames:
            raise HttpError(413, f"batch body: more than {max_frames} frames (--max-frames)")
    largest = max((n for _, n in spans), default=0)
    if budget is not None:
        budget.take(largest)
        held[0] += largest
    frames = []
    if isinstance(data, bytearray):
        for start, n in reversed(spans):
            frames.append(bytes(data[start:start + n]))
            del data[start - FRAME.size:]
        frames.reverse()
    else:
        frames = [bytes(data[start:start + n]) for start, n in spans]
    return frames


def join_frames(parts: list[bytes]) -> bytes:
    """A batch body (what ``POST /v1/classify/batch`` reads)."""
    return b"".join(FRAME.pack(len(p)) + p for p in parts)


#: the endpoints and their methods; any other path or method is a JSON 404 / 405
ENDPOINTS = {"/v1/classify": ("POST",), "/v1/classify/batch": ("POST",), "/health": ("GET", "HEAD"),
             "/v1/models": ("GET", "HEAD"), "/v1/stats": ("GET", "HEAD")}


def make_app(service: Service):
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    async def classify(request):
        return await service.handle(request, batch=False)

    async def classify_batch(request):
        return await service.handle(request, batch=True)

    async def health(request):
        zoo = service.receiver.zoo
        return service.respond({"status": "ok", "experts": len(zoo.experts), "default": zoo.default is not None,
                                "in_flight": service.inflight})

    async def models(request):
        return service.respond(service.receiver.zoo.models())

    async def stats(request):
        return service.respond({**service.stats.as_dict(), "buffered_bytes": service.budget.held})

    async def http_error(request, exc: HTTPException):
        path = request.url.path
        if exc.status_code == 404:
            reason = f"no endpoint {path[:200]!r}; the endpoints: {', '.join(ENDPOINTS)}"
        elif exc.status_code == 405:
            reason = (f"{request.method[:20]} is not allowed on {path}; use "
                      f"{' or '.join(ENDPOINTS.get(path, ('POST',)))}")
        else:
            reason = str(exc.detail)
        return service.respond({"error": reason}, exc.status_code, dict(exc.headers or {}))

    async def server_error(request, exc: Exception):
        log.error("request failed", exc_info=exc)
        return service.respond({"error": f"internal error ({type(exc).__name__})"}, 500)

    @asynccontextmanager
    async def lifespan(app):
        await service.startup()
        yield
        await service.shutdown()

    handlers = {"/v1/classify": classify, "/v1/classify/batch": classify_batch, "/health": health,
                "/v1/models": models, "/v1/stats": stats}
    app = Starlette(routes=[Route(path, handlers[path], methods=list(methods)) for path, methods in ENDPOINTS.items()],
                    exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan)
    app.router.redirect_slashes = False     # /v1/classify/ is a 404, not a 307 a client may follow as a GET
    return app


# --------------------------------------------------------------------------- command line

@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@zoo_options()
@click.option("--arch", default=None, help="Architecture of a plain weights file or of 'pretrained'.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device of every model.")
@precision_option()
@click.option("--topk", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--max-body", type=click.IntRange(min=1), default=Limits.max_body, show_default=True,
              help="Largest request body in bytes.")
@max_pixels_option
@click.option("--max-inflight", type=click.IntRange(min=1), default=Limits.max_inflight, show_default=True,
              help="Requests served at once; more get 503 at once.")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=Limits.timeout, show_default=True,
              help="Seconds for one request, reading its body included (408 or 503 past it).")
@click.option("--max-frames", type=click.IntRange(min=1), default=Limits.max_frames, show_default=True,
              help="Bitstreams in one batch request.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Longest wait for requests still decoding before a forward starts.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images in one forward.")
@click.option("--decode-threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Threads that read the headers and route (and decode, with --decode-processes 0).")
@click.option("--decode-processes", type=click.IntRange(min=0), default=2, show_default=True,
              help="Worker processes that decode, so that no decode stalls the server; 0: decode in the threads.")
@click.option("--max-buffered", type=click.IntRange(min=1), default=Limits.max_buffered, show_default=True,
              help="Bytes of request bodies held at once, all requests together; past it 503 at once.")
@click.option("--max-connections", type=click.IntRange(min=1), default=ConnectionLimits.max_connections,
              show_default=True, help="Open connections; past it the one waiting longest for its headers is closed.")
@click.option("--header-timeout", type=click.FloatRange(min=0.01), default=ConnectionLimits.header_timeout,
              show_default=True, help="Seconds for a connection to send a request's headers (408 past it).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads of a forward (default: torch's, the core count).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
def cli(experts, default, arch, routing, host, port, device, precision, k, max_body, budget, max_inflight, timeout,
        max_frames, batch_wait_ms, max_batch, decode_threads, decode_processes, max_buffered, max_connections,
        header_timeout, threads, log_level):
    """Serve the receiver over HTTP: each bitstream answered by the expert of its codec and rate."""
    import uvicorn

    from trainer.distributed import resolve_device
    from trainer.precision import resolve

    if experts is None and default is None:
        raise click.UsageError("give --experts DIR|LIST, --default MODEL, or both")
    if max_body > max_buffered:
        raise click.UsageError(f"--max-body {max_body} is over --max-buffered {max_buffered}: no body could be held")
    prec = resolve(precision, resolve_device(device))    # bf16 where the device has none: one line, exit 2
    sock = listen(host, port)                # before the models load: a busy port fails at once
    max_connections = fit_open_files(max_connections)
    if threads:
        import torch
        torch.set_num_threads(threads)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    log.info("%s", prec.describe())
    t0 = time.perf_counter()
    zoo = load_zoo(experts, default, arch, device, precision=prec, routing=routing)
    log.info("loaded %d expert(s)%s in %.1f s", len(zoo.experts), " and a default" if zoo.default else "",
             time.perf_counter() - t0)
    service = Service(Receiver(zoo, device, k, budget),
                      Limits(max_body, max_inflight, timeout, max_frames, max_buffered),
                      batch_wait_ms, max_batch, decode_threads, decode_processes)
    protocol = protocol_class(ConnectionLimits(max_connections, header_timeout), service.stats.answered)
    config = uvicorn.Config(make_app(service), log_level="warning", access_log=False, http=protocol,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=16 << 10)
    log.info("listening on http://%s:%d", *sock.getsockname()[:2])
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def listen(host: str, port: int):
    """The listening socket, bound now: a port in use or a host that is not this machine's is
    one usage error (exit 2), before anything is loaded."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise click.BadParameter(f"{host!r} is not a host name or address this machine has ({exc})",
                                 param_hint="'--host'") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise click.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                 param_hint="'--host'/'--port'") from None
    sock.set_inheritable(True)
    return sock


#: file descriptors kept for the models, the pools and the logs, besides the connections
SPARE_FDS = 64


def fit_open_files(max_connections: int) -> int:
    """Raise the open-file limit towards what ``max_connections`` needs (up to the hard limit);
    when it cannot reach it, fewer connections, with a warning."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        fitted = max(1, soft - SPARE_FDS)
        click.echo(f"warning: {soft} open files allowed: --max-connections {max_connections} lowered to {fitted}",
                   err=True)
        return fitted
    return max_connections


def main(argv: list[str] | None = None) -> int:
    return run_click(cli, argv, "m2m-serve")


if __name__ == "__main__":
    sys.exit(main())
