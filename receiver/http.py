"""The connection layer of ``m2m-serve``: uvicorn's h11 protocol with the bounds a public port
needs, below the application (:mod:`receiver.serve`).

uvicorn bounds a request only once its headers are in; before that a client may hold a socket
for ever, and what its parser refuses is answered in plain text.  Here:

- **header time**: a connection must complete a request's headers within ``header_timeout``
  seconds of connecting, or of its previous answer (an idle keep-alive connection is closed;
  one that sent part of a request gets 408);
- **connections**: at most ``max_connections`` at once; past it the connection that has waited
  longest for its headers is closed to make room (a client that sends a whole request, such as
  a health check, always gets in), and when every connection is busy with a request the new
  one gets 503;
- **parser refusals** (a garbage request line, two Content-Lengths, ``Content-Length: -1``,
  oversized headers) get the service's one-line JSON ``error``, as every other answer does;
- **lingering close**: an answer that ends a connection while the client is still sending its
  body (413 from ``Content-Length``, 400) is followed by a half-close, and what the client still
  sends is read and dropped, up to ``drain_bytes`` or ``linger_s`` seconds: a client that writes
  its whole body before reading (Python's urllib) reads the refusal instead of a reset.

Every answer given here is passed to ``on_answer(status)``, so that the service counts it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 512          # open connections at once
    header_timeout: float = 10.0        # seconds to send a request's headers
    drain_bytes: int = 64 << 20         # dropped after an answer that ends a connection
    linger_s: float = 2.0               # ... for at most this long


def error_json(reason: str) -> bytes:
    """The body of every error answer: one JSON object, ``error`` one line."""
    return json.dumps({"error": " ".join(reason.split())}).encode()


class _LingeringTransport:
    """The connection's transport, whose ``close`` lingers while the client may still be
    sending (see the module's doc); everything else is the real transport's."""

    def __init__(self, transport, protocol: "BoundedProtocol"):
        self._transport, self._protocol = transport, protocol
        self._lingering = False

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._lingering or self._transport.is_closing()

    def close(self) -> None:
        if self._lingering or self._transport.is_closing():
            return
        p = self._protocol
        sending = p.conn.their_state in (h11.SEND_BODY, h11.ERROR, h11.IDLE) and p.received_any
        if not sending or not self._transport.can_write_eof():
            self._transport.close()
            return
        self._lingering = True
        p.start_draining()
        self._transport.write_eof()         # the answer, then FIN; reading goes on
        self._transport.resume_reading()

    def really_close(self) -> None:
        self._transport.close()


class BoundedProtocol(H11Protocol):
    """uvicorn's h11 protocol bounded as the module says; :func:`protocol_class` binds the
    limits and the counter."""

    limits = ConnectionLimits()
    on_answer: Callable[[int], None] = staticmethod(lambda status: None)

    def connection_made(self, transport) -> None:
        self.waiting_since: float | None = None
        self.received_any = False          # bytes of the current request received
        self._draining: int | None = None
        self._header_timer = None
        super().connection_made(_LingeringTransport(transport, self))
        self._parser_error = ""
        next_event = self.conn.next_event

        def keep_reason():                 # uvicorn drops the parser's reason; the answer names it
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._parser_error = str(exc)
                raise
        self.conn.next_event = keep_reason
        self._wait_for_headers()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    # -- header time and the connection bound --------------------------------------------------
    def _wait_for_headers(self) -> None:
        self.waiting_since = self.loop.time()
        self.received_any = False
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.received_any:
            self.send_json(408, f"request headers not received within {self.limits.header_timeout:g} s "
                                "(--header-timeout)")
        else:                              # an idle connection: closed without a word
            self.transport.really_close()

    def _make_room(self) -> None:
        waiting = [p for p in self.connections if p is not self and getattr(p, "waiting_since", None) is not None
                   and not p.transport.is_closing()]
        if waiting:
            oldest = min(waiting, key=lambda p: p.waiting_since)
            oldest.transport.really_close()
        else:
            self.send_json(503, f"busy: {len(self.connections) - 1} connections open, every one with a request "
                                "(--max-connections)")

    def data_received(self, data: bytes) -> None:
        if self._draining is not None:
            self._draining += len(data)
            if self._draining > self.limits.drain_bytes:
                self.transport.really_close()
            return
        self.received_any = True
        super().data_received(data)
        if self.waiting_since is not None and self.conn.their_state is not h11.IDLE:
            self.waiting_since = None       # headers in: the request's own --timeout bounds it now
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request's headers are awaited, unless a pipelined one is already in
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._wait_for_headers()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    # -- lingering close ---------------------------------------------------------------------------
    def start_draining(self) -> None:
        self._cancel_header_timer()
        self.waiting_since = None
        self._draining = 0
        self.loop.call_later(self.limits.linger_s, self.transport.really_close)

    def eof_received(self):
        if self._draining is not None:
            self.transport.really_close()
        return None

    # -- answers given here ----------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        self.send_json(400, f"malformed HTTP request ({self._parser_error[:200] or 'refused by the HTTP parser'}): "
                            "the request line, a header or the body's framing (Content-Length, "
                            "Transfer-Encoding) is not HTTP/1.1")

    def send_json(self, status: int, reason: str) -> None:
        body = error_json(reason)
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=head, reason=STATUS_PHRASES[status]))
            out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:      # h11 will not answer in its state: the same bytes by hand
            out = (f"HTTP/1.1 {status} {STATUS_PHRASES[status].decode()}\r\n".encode()
                   + b"".join(k + b": " + v + b"\r\n" for k, v in head) + b"\r\n" + body)
        self.transport.write(out)
        self.on_answer(status)
        self.transport.close()


def protocol_class(limits: ConnectionLimits, on_answer: Callable[[int], None]) -> type[BoundedProtocol]:
    """A :class:`BoundedProtocol` with these limits, reporting its answers to ``on_answer``
    (uvicorn takes a class for its ``http`` setting)."""
    return type("BoundedProtocol", (BoundedProtocol,), {"limits": limits, "on_answer": staticmethod(on_answer)})
