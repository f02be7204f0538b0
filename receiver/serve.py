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

Models are loaded once at start; a request never touches the disk.  Each request is read
(bounded), then received in a thread pool (its headers probed once: codec, size within the
pixel budget, quality; routed; decoded: :meth:`Receiver.receive`); the decoded images of
concurrent requests meet in a micro-batch that waits at most ``--batch-wait-ms`` for
requests still decoding, and each expert runs one forward over its share
(:meth:`Receiver.answer`).  A bad request gets a 4xx status and a one-line ``error``;
a server at its ``--max-inflight`` limit answers 503 at once.
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

from pipeline.limits import max_pixels_option
from trainer.clitools import run_click
from trainer.precision import click_option as precision_option

from .core import InputError, InputTooLargeError, Prediction, Receiver
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
    started: float = field(default_factory=time.monotonic)

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

class Service:
    def __init__(self, receiver: Receiver, limits: Limits, wait_ms: float = 2.0, max_batch: int = 32,
                 decode_threads: int = 2):
        self.receiver, self.limits = receiver, limits
        self.stats = Stats()
        self.wait_s, self.max_batch = wait_ms / 1000, max_batch
        self.decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        self.inflight = 0
        self.batcher: MicroBatcher | None = None

    async def startup(self) -> None:
        self.batcher = MicroBatcher(self.receiver, self.wait_s, self.max_batch, self.stats)
        self.batcher.start()

    async def shutdown(self) -> None:
        if self.batcher:
            await self.batcher.stop()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    # -- reading a body, bounded in size and time ------------------------------------------------
    async def read_body(self, request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HttpError(400, f"Content-Length {length[:32]!r} is not a number")
            if int(length) > self.limits.max_body:
                raise HttpError(413, f"body of {int(length):,} bytes is over the limit of "
                                     f"{self.limits.max_body:,} (--max-body)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limits.max_body:
                raise HttpError(413, f"body over the limit of {self.limits.max_body:,} bytes (--max-body)")
            chunks.append(chunk)
        if not size:
            raise HttpError(400, "empty body: send the bitstream as the request body")
        return b"".join(chunks)

    # -- one bitstream ---------------------------------------------------------------------------
    async def classify_one(self, data: bytes, name: str) -> Prediction:
        """Route, decode and answer one bitstream; InputError for a bad one."""
        loop = asyncio.get_running_loop()
        self.batcher.decoding += 1
        submitted = False
        try:
            t0 = time.perf_counter()
            expert, x, pred = await loop.run_in_executor(self.decode_pool, self.receiver.receive, data, name)
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
        from starlette.responses import JSONResponse

        t0 = time.perf_counter()
        self.stats.requests += 1
        info = {"codec": "-", "bytes": 0, "route": "-"}
        if self.inflight >= self.limits.max_inflight:
            status, body = 503, {"error": f"busy: {self.inflight} requests in flight (--max-inflight)"}
        else:
            self.inflight += 1
            try:
                status, body = 200, await asyncio.wait_for(self._serve(request, batch, info), self.limits.timeout)
            except HttpError as exc:
                status, body = exc.status, {"error": exc.reason}
            except asyncio.TimeoutError:
                status, body = (408 if info["bytes"] == 0 else 503), {
                    "error": f"not answered within {self.limits.timeout:g} s (--timeout)"}
            except ClientDisconnect:
                status, body = 400, {"error": "the client closed the connection before sending its body"}
            except Exception as exc:  # noqa: BLE001 - one request's failure is its answer; the server goes on
                log.exception("request failed")
                status, body = 500, {"error": f"internal error ({type(exc).__name__}: {str(exc)[:200]})"}
            finally:
                self.inflight -= 1
        if status != 200:
            self.stats.errors += 1
        self.stats.handler_s += time.perf_counter() - t0
        log.info("%s %s %d codec=%s bytes=%s route=%s %.1f ms", request.method, request.url.path, status,
                 info["codec"], info["bytes"], json.dumps(info["route"]), 1000 * (time.perf_counter() - t0))
        return JSONResponse(body, status_code=status, headers={"Connection": "close"} if status in (408, 413, 503) else None)

    async def _serve(self, request, batch: bool, info: dict):
        data = await self.read_body(request)
        info["bytes"] = len(data)
        if not batch:
            try:
                pred = await self.classify_one(data, "body")
            except InputError as exc:
                raise HttpError(413 if isinstance(exc, InputTooLargeError) else 422, str(exc)) from None
            info["codec"], info["route"] = pred.codec, f"{pred.expert}: {pred.route}" if pred.expert else "-"
            return asdict(pred)
        frames = split_frames(data, self.limits.max_frames)
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


def split_frames(data: bytes, max_frames: int) -> list[bytes]:
    """The bitstreams of a batch body: each a 4-byte big-endian length, then that many bytes."""
    frames, pos = [], 0
    while pos < len(data):
        if pos + FRAME.size > len(data):
            raise HttpError(400, f"batch body: frame {len(frames)} has a truncated length field")
        (n,) = FRAME.unpack_from(data, pos)
        pos += FRAME.size
        if n == 0 or pos + n > len(data):
            raise HttpError(400, f"batch body: frame {len(frames)} declares {n} bytes, "
                                 f"{len(data) - pos} remain")
        frames.append(data[pos:pos + n])
        pos += n
        if len(frames) > max_frames:
            raise HttpError(413, f"batch body: more than {max_frames} frames (--max-frames)")
    return frames


def join_frames(parts: list[bytes]) -> bytes:
    """A batch body (what ``POST /v1/classify/batch`` reads)."""
    return b"".join(FRAME.pack(len(p)) + p for p in parts)


def make_app(service: Service):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def classify(request):
        return await service.handle(request, batch=False)

    async def classify_batch(request):
        return await service.handle(request, batch=True)

    async def health(request):
        zoo = service.receiver.zoo
        return JSONResponse({"status": "ok", "experts": len(zoo.experts), "default": zoo.default is not None,
                             "in_flight": service.inflight})

    async def models(request):
        return JSONResponse(service.receiver.zoo.models())

    async def stats(request):
        return JSONResponse(service.stats.as_dict())

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await service.startup()
        yield
        await service.shutdown()

    return Starlette(routes=[Route("/v1/classify", classify, methods=["POST"]),
                             Route("/v1/classify/batch", classify_batch, methods=["POST"]),
                             Route("/health", health), Route("/v1/models", models), Route("/v1/stats", stats)],
                     lifespan=lifespan)


# --------------------------------------------------------------------------- command line

@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--experts", default=None,
              help="A folder of run folders, or a YAML list of checkpoints ({path: ..., settings: [...]}).")
@click.option("--default", "default", default=None,
              help="The model when no expert fits: a checkpoint, a weights file (with --arch), or 'pretrained' "
                   "(the torchvision weights of --arch).")
@click.option("--arch", default=None, help="Architecture of a plain weights file or of 'pretrained'.")
@click.option("--routing", default=None, help="Route by this calibrated routing table (receiver.calibrate).")
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
@click.option("--decode-threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads of a forward (default: torch's, the core count).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
def cli(experts, default, arch, routing, host, port, device, precision, k, max_body, budget, max_inflight, timeout,
        max_frames, batch_wait_ms, max_batch, decode_threads, threads, log_level):
    """Serve the receiver over HTTP: each bitstream answered by the expert of its codec and rate."""
    import uvicorn

    from trainer.distributed import resolve_device
    from trainer.precision import resolve

    if experts is None and default is None:
        raise click.UsageError("give --experts DIR|LIST, --default MODEL, or both")
    prec = resolve(precision, resolve_device(device))    # bf16 where the device has none: one line, exit 2
    if threads:
        import torch
        torch.set_num_threads(threads)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    log.info("%s", prec.describe())
    t0 = time.perf_counter()
    zoo = load_zoo(experts, default, arch, device, precision=prec, routing=routing)
    log.info("loaded %d expert(s)%s in %.1f s", len(zoo.experts), " and a default" if zoo.default else "",
             time.perf_counter() - t0)
    service = Service(Receiver(zoo, device, k, budget), Limits(max_body, max_inflight, timeout, max_frames),
                      batch_wait_ms, max_batch, decode_threads)
    uvicorn.run(make_app(service), host=host, port=port, log_level="warning", access_log=False,
                timeout_keep_alive=5, h11_max_incomplete_event_size=16 << 10)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_click(cli, argv, "m2m-serve")


if __name__ == "__main__":
    sys.exit(main())
